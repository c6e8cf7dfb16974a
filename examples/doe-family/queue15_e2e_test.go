package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The queue's end-to-end tests: a delivery in flight when the server is
// killed, and the DSNs the queue generates with DMARC p=reject published
// for the local domain.

// relayHost is a relay host on loopback for the queue tests: it refuses
// with 550 5.1.1 at RCPT the recipients in refuse and accepts the others,
// reporting each message it accepts on got.
type relayHost struct {
	addr   string
	refuse map[string]bool
	got    chan sinkMessage
}

func startRelayHost(t *testing.T, refuse ...string) *relayHost {
	t.Helper()
	r := &relayHost{refuse: map[string]bool{}, got: make(chan sinkMessage, 16)}
	for _, a := range refuse {
		r.refuse[a] = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r.addr = ln.Addr().String()
	srv := gosmtp.NewServer(r)
	srv.Domain = "relayhost.test"
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *relayHost) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &relayHostSession{r: r}, nil
}

type relayHostSession struct {
	r    *relayHost
	from string
	to   []string
}

func (s *relayHostSession) Mail(from string, _ *gosmtp.MailOptions) error { s.from = from; return nil }
func (s *relayHostSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if s.r.refuse[to] {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	}
	s.to = append(s.to, to)
	return nil
}
func (s *relayHostSession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	s.r.got <- sinkMessage{From: s.from, To: s.to, Data: b}
	return nil
}
func (s *relayHostSession) Reset()        { s.from, s.to = "", nil }
func (s *relayHostSession) Logout() error { return nil }

// stallingHost accepts connections and never answers, so that a delivery
// to it hangs; each accepted connection is reported on the channel.
func stallingHost(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan struct{}, 16)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String(), accepted
}

// setRelayHost makes the next start use addr as the relay host.
func (e *env) setRelayHost(addr string) {
	for i := len(e.args) - 2; i >= 0; i-- {
		if e.args[i] == "-relayhost" {
			e.args[i+1] = addr
			return
		}
	}
	e.args = append(e.args, "-relayhost", addr)
}

// TestQueue15ResumeAfterKill9: a message whose delivery hangs when the
// server is killed with SIGKILL is delivered well within a minute of the
// restart, not after its backoff (5 minutes here).
func TestQueue15ResumeAfterKill9(t *testing.T) {
	stall, accepted := stallingHost(t)
	e := newEnv(t, "-relayhost", stall, "-retry-min", "5m")
	require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"},
		message("john@doe-family.com", "friend@other.test", "in-flight", "delivered after the crash")))
	select {
	case <-accepted: // the attempt is under way, and recorded
	case <-time.After(20 * time.Second):
		t.Fatal("the delivery attempt never reached the relay host")
	}
	e.stop(syscall.SIGKILL)

	good := startRelayHost(t)
	e.setRelayHost(good.addr)
	restarted := time.Now()
	e.start()
	select {
	case m := <-good.got:
		assert.Contains(t, string(m.Data), "Subject: in-flight")
		assert.Equal(t, []string{"friend@other.test"}, m.To)
		assert.Less(t, time.Since(restarted), time.Minute)
	case <-time.After(45 * time.Second):
		t.Fatal("the message in flight at the kill was not delivered within 45 s of the restart")
	}
	e.stop(syscall.SIGTERM)
}

// submitNotify submits as john with the given NOTIFY for every recipient.
func submitNotify(t *testing.T, e *env, to []string, notify []gosmtp.DSNNotify, msg string) error {
	t.Helper()
	c, err := gosmtp.DialStartTLS(e.submission, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("laptop.example.net"))
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "john@doe-family.com", password)))
	if err := c.Mail("john@doe-family.com", nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, &gosmtp.RcptOptions{Notify: notify}); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// withSubject returns the one file of files holding subject.
func withSubject(t *testing.T, files []string, subject string) string {
	t.Helper()
	for _, f := range files {
		if strings.Contains(f, "\nSubject: "+subject+"\r\n") || strings.Contains(f, "\nSubject: "+subject+"\n") {
			return f
		}
	}
	t.Fatalf("no message with Subject: %s among %d", subject, len(files))
	return ""
}

// TestQueue15BouncesArrive: with DMARC p=reject published for the local
// domain, the DSN for a local sender's message refused 550 by the relay
// host, and the report asked by NOTIFY=SUCCESS, are delivered to the
// sender's Maildir (RFC 3464 multipart/report, from MAILER-DAEMON of the
// domain, DKIM-signed by it), not quarantined.
func TestQueue15BouncesArrive(t *testing.T) {
	relayHost := startRelayHost(t, "nobody@other.test")
	e := newEnv(t, "-relayhost", relayHost.addr)
	e.dns.Add(`_dmarc.doe-family.com. TXT "v=DMARC1; p=reject"`)
	inbox := filepath.Join(e.maildir, "john", "new")
	verify := func(t *testing.T, msg string) {
		t.Helper()
		vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				return e.dns.Resolver().LookupTXT(context.Background(), domain)
			},
		})
		require.NoError(t, err)
		require.Len(t, vs, 1, "one DKIM signature")
		assert.NoError(t, vs[0].Err, "the signature verifies")
		assert.Equal(t, "doe-family.com", vs[0].Domain, "signed by the domain of its From")
	}

	t.Run("failure", func(t *testing.T) {
		require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"nobody@other.test"},
			message("john@doe-family.com", "nobody@other.test", "refused-550", "the relay host refuses this")))
		dsn := withSubject(t, waitFiles(t, inbox, 1), "Undelivered Mail Returned to Sender")
		assert.Contains(t, dsn, "From: Mail Delivery System <MAILER-DAEMON@doe-family.com>")
		assert.Contains(t, dsn, "Content-Type: multipart/report; report-type=delivery-status;")
		assert.Contains(t, dsn, "Content-Type: message/delivery-status")
		assert.Contains(t, dsn, "Final-Recipient: rfc822; nobody@other.test")
		assert.Contains(t, dsn, "Action: failed")
		assert.Contains(t, dsn, "Status: 5.1.1")
		assert.Contains(t, dsn, "Subject: refused-550", "the original message is returned")
		assert.Contains(t, dsn, "Return-Path: <>")
		verify(t, dsn)
	})

	t.Run("NOTIFY=SUCCESS", func(t *testing.T) {
		require.NoError(t, submitNotify(t, e, []string{"friend@other.test"}, []gosmtp.DSNNotify{gosmtp.DSNNotifySuccess},
			message("john@doe-family.com", "friend@other.test", "report-success", "tell me it arrived")))
		select {
		case m := <-relayHost.got:
			assert.Contains(t, string(m.Data), "Subject: report-success")
		case <-time.After(20 * time.Second):
			t.Fatal("the message never reached the relay host")
		}
		dsn := withSubject(t, waitFiles(t, inbox, 2), "Successful Mail Delivery Report")
		assert.Contains(t, dsn, "From: Mail Delivery System <MAILER-DAEMON@doe-family.com>")
		assert.Contains(t, dsn, "Content-Type: multipart/report; report-type=delivery-status;")
		assert.Contains(t, dsn, "Final-Recipient: rfc822; friend@other.test")
		assert.Contains(t, dsn, "Action: delivered")
		verify(t, dsn)
	})

	quarantined, _ := filepath.Glob(filepath.Join(e.spool, "quarantine", "*", "*"))
	assert.Empty(t, quarantined, "no DSN quarantined")
	assert.Equal(t, 1, countFiles(filepath.Join(e.spool, "dead")), "the refused message is kept in dead/, its DSN is not")
}
