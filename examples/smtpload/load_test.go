package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type countingBackend struct {
	messages atomic.Int64
	bytes    atomic.Int64
	rejectTo string
}

func (b *countingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &countingSession{b}, nil
}

type countingSession struct{ b *countingBackend }

func (s *countingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *countingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if to == s.b.rejectTo {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	return nil
}
func (s *countingSession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	s.b.bytes.Add(n)
	s.b.messages.Add(1)
	return err
}
func (s *countingSession) Reset()        {}
func (s *countingSession) Logout() error { return nil }

func startServer(t *testing.T, b smtp.Backend) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := smtp.NewServer(b)
	s.Domain = "test.localhost"
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

func TestRun(t *testing.T) {
	tests := []struct {
		name       string
		conns, n   int
		perConn    int
		size       int
		to         []string
		rejectTo   string
		wantSent   int64
		wantFailed int64
	}{
		{name: "one connection", conns: 1, n: 20, size: 1000, to: []string{"a@example.com"}, wantSent: 20},
		{name: "eight connections, reconnecting", conns: 8, n: 200, perConn: 3, size: 4096, to: []string{"a@example.com"}, wantSent: 200},
		{name: "rejected recipient counted", conns: 2, n: 10, size: 500, to: []string{"bad@example.com"}, rejectTo: "bad@example.com", wantFailed: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &countingBackend{rejectTo: tt.rejectTo}
			addr := startServer(t, b)
			rep, err := Run(context.Background(), Config{
				Addr: addr, Conns: tt.conns, Count: tt.n, PerConn: tt.perConn, Size: tt.size,
				Duration: 20 * time.Second, Helo: "load.test", From: "s@example.net", To: tt.to,
			})
			require.NoError(t, err)
			assert.Equal(t, tt.wantSent, rep.Sent)
			assert.Equal(t, tt.wantFailed, rep.Failed)
			assert.Equal(t, tt.wantSent, b.messages.Load(), "messages the server received")
			if tt.wantSent > 0 {
				assert.Equal(t, tt.size, rep.Size)
				assert.Greater(t, rep.Rate, 0.0)
				assert.LessOrEqual(t, rep.P50, rep.P99)
				assert.LessOrEqual(t, rep.P99, rep.Max)
			}
			if tt.wantFailed > 0 {
				assert.Equal(t, int(tt.wantFailed), rep.Errors["550 5.1.1 No such user"], "errors: %v", rep.Errors)
			}
			assert.Contains(t, rep.String(), "msg/s")
		})
	}
}

func TestRunStopsAtDuration(t *testing.T) {
	// A server that never answers: the run must end at its time bound.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	rep, err := Run(context.Background(), Config{Addr: ln.Addr().String(), Conns: 2, Count: 100, Size: 100,
		Duration: 300 * time.Millisecond, Helo: "load.test", From: "s@example.net", To: []string{"a@example.com"}})
	require.NoError(t, err)
	assert.Zero(t, rep.Sent)
	assert.Less(t, time.Since(start), 15*time.Second, "the run must be bounded by its duration")
}

// A signed load carries a DKIM signature that verifies against the
// sender domain's key, so that a server verifying DKIM does real work.
func TestSignBody(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	cfg := Config{From: "load@sender.example", To: []string{"user@doe-family.com"}, Helo: "mail.sender.example", Size: 4096,
		DKIMSigner: priv, DKIMSelector: "load"}
	body, err := signBody(cfg, makeBody(cfg))
	require.NoError(t, err)
	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	verifications, err := dkim.VerifyWithOptions(bytes.NewReader(body), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain != "load._domainkey.sender.example" {
				return nil, fmt.Errorf("unexpected lookup of %s", domain)
			}
			return []string{txt}, nil
		},
	})
	require.NoError(t, err)
	require.Len(t, verifications, 1)
	assert.NoError(t, verifications[0].Err)
	assert.Equal(t, "sender.example", verifications[0].Domain)

	_, err = signBody(Config{From: "nodomain", DKIMSigner: priv}, body)
	assert.Error(t, err)
}

// bodyBackend keeps the body of every message it receives.
type bodyBackend struct {
	countingBackend
	mu     sync.Mutex
	bodies [][]byte
}

func (b *bodyBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &bodySession{countingSession{&b.countingBackend}, b}, nil
}

type bodySession struct {
	countingSession
	b *bodyBackend
}

func (s *bodySession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	s.b.mu.Lock()
	s.b.bodies = append(s.b.bodies, body)
	s.b.mu.Unlock()
	return err
}

// TestSendStuffedBody: the body written as dotStuffed made it (once, not
// through go-smtp's writer) reaches the server as go-smtp's writer would
// send it: leading dots kept, the last line ended, nothing added.
func TestSendStuffedBody(t *testing.T) {
	for _, body := range []string{
		"Subject: dots\r\n\r\n.\r\n..two\r\n. space\r\nend\r\n",
		"Subject: no final CRLF\r\n\r\nlast line",
		"Subject: bare LF\n\n.x\nend\n",
		"",
	} {
		b := &bodyBackend{}
		addr := startServer(t, b)
		c, raw, stop, err := dial(context.Background(), Config{Addr: addr, Helo: "load.test"}, "")
		require.NoError(t, err)
		require.NotNil(t, raw, "no TLS: the body goes out raw")
		require.NoError(t, send(c, raw, Config{From: "s@example.net", To: []string{"a@example.com"}}, []byte(body), dotStuffed([]byte(body))))
		// The same body through go-smtp's own writer, for comparison.
		require.NoError(t, send(c, nil, Config{From: "s@example.net", To: []string{"a@example.com"}}, []byte(body), nil))
		stop()
		require.NoError(t, c.Quit())
		b.mu.Lock()
		require.Len(t, b.bodies, 2, "%q", body)
		assert.Equal(t, string(b.bodies[1]), string(b.bodies[0]), "%q", body)
		b.mu.Unlock()
	}
}
