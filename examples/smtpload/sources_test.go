package main

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ipBackend counts the messages each client IP sent.
type ipBackend struct {
	mu  sync.Mutex
	ips map[string]int
}

func (b *ipBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
	return &ipSession{b: b, ip: host}, nil
}

type ipSession struct {
	b  *ipBackend
	ip string
}

func (s *ipSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *ipSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *ipSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	s.b.mu.Lock()
	s.b.ips[s.ip]++
	s.b.mu.Unlock()
	return err
}
func (s *ipSession) Reset()        {}
func (s *ipSession) Logout() error { return nil }

func TestRunSources(t *testing.T) {
	tests := []struct {
		name       string
		sources    []string
		wantIPs    []string
		wantSent   int64
		wantFailed int64
		wantError  string
	}{
		{name: "system's choice", wantIPs: []string{"127.0.0.1"}, wantSent: 40},
		{name: "two loopback sources in turn", sources: []string{"127.0.0.2", "127.0.0.3"},
			wantIPs: []string{"127.0.0.2", "127.0.0.3"}, wantSent: 40},
		{name: "bad source", sources: []string{"127.0.0.2", "not-an-ip"}, wantError: `smtpload: bad source address "not-an-ip"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &ipBackend{ips: map[string]int{}}
			addr := startServer(t, b)
			rep, err := Run(context.Background(), Config{
				Addr: addr, Conns: 4, Count: 40, Size: 500, Sources: tt.sources,
				Duration: 20 * time.Second, Helo: "load.test", From: "s@example.net", To: []string{"a@example.com"},
			})
			if tt.wantError != "" {
				require.EqualError(t, err, tt.wantError)
				assert.Empty(t, b.ips, "nothing sent")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantSent, rep.Sent)
			assert.Equal(t, tt.wantFailed, rep.Failed)
			b.mu.Lock()
			defer b.mu.Unlock()
			got := []string{}
			for ip, n := range b.ips {
				got = append(got, ip)
				assert.Positive(t, n)
			}
			assert.ElementsMatch(t, tt.wantIPs, got)
		})
	}
}

func TestRunCountsEachRefusedConnectionOnce(t *testing.T) {
	// Nothing listens: every attempt fails at connect, and the count of
	// failures is the count asked for, not more.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	rep, err := Run(context.Background(), Config{Addr: addr, Conns: 4, Count: 12, Size: 100,
		Duration: 20 * time.Second, Helo: "load.test", From: "s@example.net", To: []string{"a@example.com"}})
	require.NoError(t, err)
	assert.Zero(t, rep.Sent)
	assert.Equal(t, int64(12), rep.Failed)
	n := 0
	for _, c := range rep.Errors {
		n += c
	}
	assert.Equal(t, 12, n, "errors: %v", rep.Errors)
}
