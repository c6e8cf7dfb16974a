package smtp

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// recorder is an Events that records each event as a line.
type recorder struct{ ch chan string }

func newRecorder() *recorder { return &recorder{ch: make(chan string, 100)} }

func (r *recorder) Connected(l string, admitted bool) {
	r.ch <- fmt.Sprintf("connected %s %v", l, admitted)
}
func (r *recorder) Disconnected(l string) { r.ch <- "disconnected " + l }
func (r *recorder) TLSHandshake(l string, err error) {
	r.ch <- fmt.Sprintf("tls %s %v", l, err == nil)
}
func (r *recorder) AuthAttempted(l string, code int) { r.ch <- fmt.Sprintf("auth %s %d", l, code) }
func (r *recorder) MessageReceived(l string, code int, size int64) {
	r.ch <- fmt.Sprintf("message %s %d %d", l, code, size)
}

// next returns the next event, failing after 10 s without one.
func (r *recorder) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10 s")
		return ""
	}
}

// expect requires the next events to be want, in order.
func (r *recorder) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		require.Equal(t, w, r.next(t))
	}
}

// none requires that no event is waiting.
func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-r.ch:
		t.Fatalf("unexpected event %q", e)
	default:
	}
}

func TestEventsMessages(t *testing.T) {
	ev := newRecorder()
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		PreQ("subject", func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
			switch m.Header.Get("Subject") {
			case "spam":
				return policy.Deny(554, "5.7.1", "No")
			case "later":
				return policy.Defer("4.7.1", "Later")
			}
			return policy.Next()
		})
	h := start(t, Config{Chain: chain, Events: ev})
	c := dialRaw(t, h.addr())
	code, _ := c.reply()
	require.Equal(t, 220, code)
	ev.expect(t, "connected mta true")
	c.expect("EHLO client.test", 250)
	body := func(subject string) string {
		return "From: a@client.test\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
	}
	for _, m := range []struct {
		subject string
		code    int
	}{{"hi", 250}, {"spam", 554}, {"later", 451}} {
		c.expect("MAIL FROM:<a@client.test>", 250)
		c.expect("RCPT TO:<b@mx.test>", 250)
		c.expect("DATA", 354)
		c.send(body(m.subject))
		c.expect(".", m.code)
		ev.expect(t, fmt.Sprintf("message mta %d %d", m.code, len(body(m.subject))))
	}
	// Dot-unstuffing: the size is what the message is, not what was sent.
	c.expect("MAIL FROM:<a@client.test>", 250)
	c.expect("RCPT TO:<b@mx.test>", 250)
	c.expect("DATA", 354)
	c.send("Subject: x\r\n\r\n..dot\r\n")
	c.expect(".", 250)
	ev.expect(t, fmt.Sprintf("message mta 250 %d", len("Subject: x\r\n\r\n.dot\r\n")))
	c.expect("QUIT", 221)
	ev.expect(t, "disconnected mta")
	ev.none(t)
}

func TestEventsConnections(t *testing.T) {
	t.Run("connect rule", func(t *testing.T) {
		ev := newRecorder()
		chain := (&policy.Chain{Logger: testLogger(t)}).Connect("deny", func(context.Context, *policy.Conn) policy.Verdict {
			return policy.Deny(554, "5.7.1", "Go away")
		})
		h := start(t, Config{Chain: chain, Events: ev})
		c := dialRaw(t, h.addr())
		code, _ := c.reply()
		require.Equal(t, 554, code)
		require.True(t, c.closed())
		ev.expect(t, "connected mta false")
		ev.none(t)
	})
	t.Run("limit", func(t *testing.T) {
		ev := newRecorder()
		h := start(t, Config{Events: ev, Limits: Limits{MaxConnectionsPerIP: 1}})
		c1 := dialRaw(t, h.addr())
		code, _ := c1.reply()
		require.Equal(t, 220, code)
		ev.expect(t, "connected mta true")
		c2 := dialRaw(t, h.addr())
		code, _ = c2.reply()
		require.Equal(t, 421, code)
		ev.expect(t, "connected mta false")
		c1.Close()
		ev.expect(t, "disconnected mta")
		ev.none(t)
	})
	t.Run("client goes", func(t *testing.T) {
		ev := newRecorder()
		h := start(t, Config{Events: ev}, Listener{Name: "in", Role: RoleMTA})
		c := dialRaw(t, h.addr())
		c.reply()
		c.expect("EHLO client.test", 250)
		c.Close() // no QUIT
		ev.expect(t, "connected in true", "disconnected in")
		ev.none(t)
	})
	t.Run("shutdown", func(t *testing.T) {
		ev := newRecorder()
		h := start(t, Config{Events: ev})
		c := dialRaw(t, h.addr())
		c.reply()
		ev.expect(t, "connected mta true")
		require.NoError(t, h.srv.Shutdown(context.Background()))
		ev.expect(t, "disconnected mta")
		ev.none(t)
	})
}

func TestEventsTLS(t *testing.T) {
	t.Run("starttls", func(t *testing.T) {
		ev := newRecorder()
		h := start(t, Config{Events: ev, TLSConfig: testTLS(t)})
		c := dialRaw(t, h.addr())
		c.reply()
		c.expect("EHLO client.test", 250)
		c.expect("STARTTLS", 220)
		tc := tls.Client(c.Conn, clientTLS())
		require.NoError(t, tc.Handshake())
		ev.expect(t, "connected mta true", "tls mta true")
		tc.Close()
		ev.expect(t, "disconnected mta")

		c = dialRaw(t, h.addr())
		c.reply()
		c.expect("EHLO client.test", 250)
		c.expect("STARTTLS", 220)
		c.send("this is no TLS ClientHello\r\n")
		require.True(t, c.closed())
		ev.expect(t, "connected mta true", "tls mta false", "disconnected mta")
		ev.none(t)
	})
	t.Run("implicit", func(t *testing.T) {
		ev := newRecorder()
		h := start(t, Config{Events: ev, TLSConfig: testTLS(t), Authenticator: mapAuth{}},
			Listener{Name: "smtps", Role: RoleImplicitTLS})
		tc, err := tls.Dial("tcp", h.addr(), clientTLS())
		require.NoError(t, err)
		ev.expect(t, "tls smtps true", "connected smtps true")
		tc.Close()
		ev.expect(t, "disconnected smtps")

		c, err := net.Dial("tcp", h.addr())
		require.NoError(t, err)
		fmt.Fprintf(c, "EHLO plaintext\r\n")
		ev.expect(t, "tls smtps false", "connected smtps false")
		c.Close()
		ev.none(t)
	})
}

func TestEventsAuth(t *testing.T) {
	ev := newRecorder()
	h := start(t, Config{Events: ev, Authenticator: mapAuth{"alice": "secret"}},
		Listener{Name: "sub", Role: RoleSubmission, AllowInsecureAuth: true})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO client.test", 250)
	ev.expect(t, "connected sub true")
	for _, a := range []struct {
		line string
		code int
	}{
		{"AUTH PLAIN " + encodeB64("\x00alice\x00wrong"), 535},
		{"AUTH PLAIN " + encodeB64("\x00locked\x00x"), 454},
		{"AUTH PLAIN " + encodeB64("\x00database-down\x00x"), 454},
		{"AUTH PLAIN " + encodeB64("no separators"), 501},
		{"AUTH PLAIN " + encodeB64("\x00alice\x00secret"), 235},
	} {
		c.expect(a.line, a.code)
		ev.expect(t, fmt.Sprintf("auth sub %d", a.code))
	}
	// LOGIN, over two challenges: one event, at the end.
	c2 := dialRaw(t, h.addr())
	c2.reply()
	c2.expect("EHLO client.test", 250)
	ev.expect(t, "connected sub true")
	c2.expect("AUTH LOGIN", 334)
	c2.expect(encodeB64("alice"), 334)
	ev.none(t)
	c2.expect(encodeB64("secret"), 235)
	ev.expect(t, "auth sub 235")
	ev.none(t)
}

// TestEventsNil: without Events nothing is called (the zero Config runs
// every path above without a recorder).
func TestEventsNil(t *testing.T) {
	h := start(t, Config{TLSConfig: testTLS(t)})
	require.NoError(t, sendMail(t, h.addr(), "a@client.test", []string{"b@mx.test"}, simpleBody))
	assert.Len(t, h.queue.all(), 1)
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("STARTTLS", 220)
	require.NoError(t, tls.Client(c.Conn, clientTLS()).Handshake())
}
