package milter

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// startRaw starts a TCP server that is not a milter: serve runs for each
// connection, which is closed when it returns or the test ends.
func startRaw(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				go func() { <-done; c.Close() }()
				serve(c)
			}()
		}
	}()
	return "inet:" + ln.Addr().String()
}

// hold reads what the client sends and never answers, until the test ends.
func hold(c net.Conn) { io.Copy(io.Discard, c) }

// answer reads the negotiation and answers b, then holds.
func answer(b string) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
		c.Write([]byte(b))
		hold(c)
	}
}

// TestFailures: a milter that is down, hangs, closes the connection
// mid-body or answers garbage gets the default action: tempfail refuses
// (never a 250 for a message it did not see), accept queues the message;
// the server keeps serving and loses nothing it acknowledged.
func TestFailures(t *testing.T) {
	type milterFn func(t *testing.T) string // returns the milter's address
	fakeWith := func(edit func(*fake)) milterFn {
		return func(t *testing.T) string { return startFake(t, "tcp", edit).addr }
	}
	hang := func(t *testing.T) <-chan struct{} {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		return release
	}
	for _, c := range []struct {
		name   string
		milter milterFn
		at     string // the stage refused under tempfail: "mail" or "data"
	}{
		{"down", func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			ln.Close()
			return "inet:" + ln.Addr().String()
		}, "mail"},
		{"silent at negotiation", func(t *testing.T) string { return startRaw(t, hold) }, "mail"},
		{"answers text", func(t *testing.T) string { return startRaw(t, answer("HTTP/1.1 400 Bad Request\r\n\r\n")) }, "mail"},
		{"answers a zero-length packet", func(t *testing.T) string { return startRaw(t, answer("\x00\x00\x00\x00")) }, "mail"},
		{"announces a 128 MiB packet", func(t *testing.T) string { return startRaw(t, answer("\x08\x00\x00\x00O")) }, "mail"},
		{"answers a truncated negotiation", func(t *testing.T) string { return startRaw(t, answer("\x00\x00\x00\x05O\x00\x00\x00\x06")) }, "mail"},
		{"closes at negotiation", func(t *testing.T) string { return startRaw(t, func(net.Conn) {}) }, "mail"},
		{"hangs at RCPT", func(t *testing.T) string {
			release := hang(t)
			return fakeWith(func(f *fake) {
				f.rcpt = func(string, string) (*gomilter.Response, error) { <-release; return gomilter.RespContinue, nil }
			})(t)
		}, "rcpt"},
		{"hangs at end of message", func(t *testing.T) string {
			release := hang(t)
			return fakeWith(func(f *fake) {
				f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) {
					<-release
					return gomilter.RespContinue, nil
				}
			})(t)
		}, "data"},
		{"closes mid-body", fakeWith(func(f *fake) {
			f.body = func([]byte) (*gomilter.Response, error) { return nil, errors.New("gone") }
		}), "data"},
	} {
		for _, action := range []DefaultAction{Tempfail, Accept} {
			t.Run(c.name+"/"+action.String(), func(t *testing.T) {
				addr := c.milter(t)
				m, err := New(Options{
					Addr: addr, Name: "broken", DefaultAction: action,
					ConnectTimeout: 2 * time.Second, CommandTimeout: 300 * time.Millisecond, EOMTimeout: 300 * time.Millisecond,
					Hostname: "mx.test.example", Logger: testLogger(t),
				})
				require.NoError(t, err)
				h := startServer(t, m)
				acked := 0
				for i := 0; i < 2; i++ {
					res := h.send("alice@sender.example", twoRcpts, testMessage)
					if action == Accept {
						require.NoError(t, res.mail)
						require.NoError(t, res.data)
						acked++
						continue
					}
					switch c.at {
					case "mail":
						assert.Equal(t, 451, code(res.mail), "%v", res.mail)
					case "rcpt":
						require.NoError(t, res.mail)
						assert.Equal(t, []int{451, 451}, []int{code(res.rcpts[0]), code(res.rcpts[1])})
					case "data":
						assert.Equal(t, 451, code(res.data), "%v", res.data)
					}
					for _, err := range append([]error{res.mail, res.data}, res.rcpts...) {
						var se *gosmtp.SMTPError
						if errors.As(err, &se) {
							assert.Equal(t, gosmtp.EnhancedCode{4, 7, 1}, se.EnhancedCode)
						}
					}
				}
				assert.Len(t, h.queue.all(), acked, "every message acknowledged is queued, no other")
			})
		}
	}
}

// TestRuleTimeout: the chain's RuleTimeout, shorter than EOMTimeout, cuts
// a hanging end of message short (the rule's context ends the command).
func TestRuleTimeout(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, "tcp", func(f *fake) {
		f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) {
			<-release
			return gomilter.RespContinue, nil
		}
	})
	t.Cleanup(func() { close(release) })
	m := newMilter(t, f, func(o *Options) { o.EOMTimeout = time.Hour; o.CommandTimeout = time.Hour })
	t.Cleanup(func() { m.Close() })
	chain := &policy.Chain{Logger: testLogger(t), RuleTimeout: 300 * time.Millisecond}
	Register(chain, m)
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	q := &memQueue{}
	h := &harness{t: t, addr: serve(t, chain, q), queue: q}
	start := time.Now()
	res := h.send("alice@sender.example", twoRcpts, testMessage)
	assert.Equal(t, 451, code(res.data), "%v", res.data)
	assert.Less(t, time.Since(start), 30*time.Second)
	assert.Empty(t, q.all())
}

// TestCancel: a rule's context cancelled (the connection closed, the
// server stopping) ends the command in progress at once.
func TestCancel(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	f := startFake(t, "tcp", func(f *fake) {
		f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) {
			close(started)
			<-release
			return gomilter.RespContinue, nil
		}
	})
	t.Cleanup(func() { close(release) })
	m := newMilter(t, f, func(o *Options) { o.EOMTimeout = time.Hour; o.CommandTimeout = time.Hour })
	defer m.Close()
	tx := policy.NewTransaction(nil, "cancel1")
	tx.From = policy.MustParseAddress("alice@sender.example")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("bob@rcpt.example")}}
	msg, err := policy.NewMessage(strings.NewReader(testMessage), int64(len(testMessage)), nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	v := m.MessageRule()(ctx, tx, msg)
	assert.Equal(t, 451, v.Reply.Code)
}
