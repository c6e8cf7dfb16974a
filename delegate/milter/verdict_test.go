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

var twoRcpts = []string{"bob@rcpt.example", "carol@rcpt.example"}

// TestModifications: each modification of the end of message is applied
// before queueing, and the rule after the milter sees the result.
func TestModifications(t *testing.T) {
	bigBody := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n", 20000) // > 1 MiB
	for _, c := range []struct {
		name  string
		eom   func(m gomilter.Modifier) error
		check func(t *testing.T, q queued, after string)
	}{
		{"add header", func(m gomilter.Modifier) error { return m.AddHeader("X-Milter", "added") },
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "Subject: hello\r\nX-Milter: added\r\n\r\nHi Bob.\r\n")
				assert.Equal(t, "hello|added", after)
			}},
		{"add folded header", func(m gomilter.Modifier) error { return m.AddHeader("X-Milter", "a\n\tb") },
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "X-Milter: a\r\n\tb\r\n\r\n")
			}},
		{"insert header at the top", func(m gomilter.Modifier) error { return m.InsertHeader(0, "X-Milter", "top") },
			func(t *testing.T, q queued, after string) {
				assert.True(t, strings.HasPrefix(q.raw, "X-Milter: top\r\nReceived: "), q.raw)
			}},
		{"insert header at 1: below our Received field", func(m gomilter.Modifier) error { return m.InsertHeader(1, "X-Milter", "second") },
			func(t *testing.T, q queued, after string) {
				assert.Regexp(t, `^Received: [^\r]*\r\n(\s[^\r]*\r\n)*X-Milter: second\r\nFrom: `, q.raw)
			}},
		{"change counts the fields the milter saw", func(m gomilter.Modifier) error {
			return errors.Join(m.InsertHeader(0, "X-Milter", "top"), m.ChangeHeader(1, "X-Milter", "changed"))
		},
			func(t *testing.T, q queued, after string) {
				assert.True(t, strings.HasPrefix(q.raw, "X-Milter: top\r\nReceived: "), q.raw)
				assert.Contains(t, q.raw, "Subject: hello\r\nX-Milter: changed\r\n\r\n")
			}},
		{"insert header after the second", func(m gomilter.Modifier) error { return m.InsertHeader(2, "X-Milter", "third") },
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "From: <alice@sender.example>\r\nX-Milter: third\r\nTo: ")
			}},
		{"change header", func(m gomilter.Modifier) error { return m.ChangeHeader(1, "Subject", "[SPAM] hello") },
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "\r\nSubject: [SPAM] hello\r\n")
				assert.NotContains(t, q.raw, "Subject: hello")
				assert.Equal(t, "[SPAM] hello|", after)
			}},
		{"delete header", func(m gomilter.Modifier) error { return m.ChangeHeader(1, "subject", "") },
			func(t *testing.T, q queued, after string) {
				assert.NotContains(t, q.raw, "Subject")
				assert.Equal(t, "|", after)
			}},
		{"change missing header adds it", func(m gomilter.Modifier) error { return m.ChangeHeader(1, "X-Milter", "new") },
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "X-Milter: new\r\n\r\n")
			}},
		{"change sender", func(m gomilter.Modifier) error { return m.ChangeFrom("<bounces@sender.example>", "") },
			func(t *testing.T, q queued, after string) {
				assert.Equal(t, "bounces@sender.example", q.from)
			}},
		{"add recipient", func(m gomilter.Modifier) error { return m.AddRecipient("<dave@rcpt.example>", "") },
			func(t *testing.T, q queued, after string) {
				assert.Equal(t, []string{"bob@rcpt.example", "carol@rcpt.example", "dave@rcpt.example"}, q.rcpts)
			}},
		{"delete recipient", func(m gomilter.Modifier) error { return m.DeleteRecipient("<carol@RCPT.example>") },
			func(t *testing.T, q queued, after string) {
				assert.Equal(t, []string{"bob@rcpt.example"}, q.rcpts)
			}},
		{"replace body", func(m gomilter.Modifier) error { return m.ReplaceBody(strings.NewReader("New body.\nSecond line.\n")) },
			func(t *testing.T, q queued, after string) {
				assert.True(t, strings.HasSuffix(q.raw, "Subject: hello\r\n\r\nNew body.\r\nSecond line.\r\n"), q.raw)
			}},
		{"replace body, large", func(m gomilter.Modifier) error { return m.ReplaceBody(strings.NewReader(bigBody)) },
			func(t *testing.T, q queued, after string) {
				assert.True(t, strings.HasSuffix(q.raw, "Subject: hello\r\n\r\n"+strings.ReplaceAll(bigBody, "\n", "\r\n")), "large body")
			}},
		{"quarantine", func(m gomilter.Modifier) error { return m.Quarantine("looks like spam") },
			func(t *testing.T, q queued, after string) {
				assert.Equal(t, "held", q.quarantine)
			}},
		{"several, in order", func(m gomilter.Modifier) error {
			return errors.Join(m.AddHeader("X-Milter", "one"), m.AddHeader("X-Milter", "two"), m.ChangeHeader(2, "X-Milter", "2"),
				m.DeleteRecipient("<bob@rcpt.example>"), m.AddRecipient("<erin@rcpt.example>", "NOTIFY=NEVER"))
		},
			func(t *testing.T, q queued, after string) {
				assert.Contains(t, q.raw, "X-Milter: one\r\nX-Milter: 2\r\n\r\n")
				assert.Equal(t, []string{"carol@rcpt.example", "erin@rcpt.example"}, q.rcpts)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, "tcp", func(f *fake) {
				f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
					return gomilter.RespAccept, c.eom(m)
				}
			})
			h := startServer(t, newMilter(t, f, func(o *Options) { o.Quarantine = "held" }))
			res := h.send("alice@sender.example", twoRcpts, testMessage)
			require.NoError(t, res.data)
			q := h.queue.all()
			require.Len(t, q, 1)
			after := h.After()
			if q[0].quarantine != "" {
				// Quarantine decides the stage: the later rules are skipped.
				require.Empty(t, after)
				after = []string{""}
			}
			require.Len(t, after, 1, "the rule after the milter ran")
			c.check(t, q[0], after[0])
		})
	}
}

// TestVerdicts: the milter's answers at each stage, as the client sees
// them.
func TestVerdicts(t *testing.T) {
	reply := func(code uint16, text string) *gomilter.Response {
		r, err := gomilter.RejectWithCodeAndReason(code, text)
		if err != nil {
			panic(err)
		}
		return r
	}
	for _, c := range []struct {
		name    string
		edit    func(*fake)
		mail    int
		rcpts   []int
		data    int
		text    string // in the last reply
		queued  []string
		noEOM   bool
		discard bool
	}{
		{name: "continue", edit: func(*fake) {}, data: 250, queued: twoRcpts},
		{name: "reject at MAIL with a reply", edit: func(f *fake) {
			f.mail = func(string, string) (*gomilter.Response, error) { return reply(553, "5.7.1 Sender refused"), nil }
		}, mail: 553, text: "Sender refused", noEOM: true},
		{name: "tempfail at MAIL", edit: func(f *fake) {
			f.mail = func(string, string) (*gomilter.Response, error) { return gomilter.RespTempFail, nil }
		}, mail: 451, noEOM: true},
		{name: "reject one recipient", edit: func(f *fake) {
			f.rcpt = func(to, _ string) (*gomilter.Response, error) {
				if strings.Contains(to, "carol") {
					return reply(550, "5.1.1 No such user"), nil
				}
				return gomilter.RespContinue, nil
			}
		}, rcpts: []int{250, 550}, data: 250, queued: []string{"bob@rcpt.example"}},
		{name: "tempfail one recipient", edit: func(f *fake) {
			f.rcpt = func(to, _ string) (*gomilter.Response, error) {
				if strings.Contains(to, "bob") {
					return gomilter.RespTempFail, nil
				}
				return gomilter.RespContinue, nil
			}
		}, rcpts: []int{451, 250}, data: 250, queued: []string{"carol@rcpt.example"}},
		{name: "reject at a header", edit: func(f *fake) {
			f.header = func(name, value string) (*gomilter.Response, error) {
				if name == "Subject" {
					return gomilter.RespReject, nil
				}
				return gomilter.RespContinue, nil
			}
		}, data: 550, text: "Command rejected", noEOM: true},
		{name: "reject at end of message with a reply", edit: func(f *fake) {
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) {
				return reply(554, "5.7.1 Spam message rejected"), nil
			}
		}, data: 554, text: "Spam message rejected"},
		{name: "plain reject at end of message", edit: func(f *fake) {
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) { return gomilter.RespReject, nil }
		}, data: 550, text: "Command rejected"},
		{name: "tempfail at end of message", edit: func(f *fake) {
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) { return gomilter.RespTempFail, nil }
		}, data: 451},
		{name: "soft reject with a 4xx reply", edit: func(f *fake) {
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) {
				return reply(450, "4.7.1 Try again later"), nil
			}
		}, data: 450, text: "Try again later"},
		{name: "discard at end of message", edit: func(f *fake) {
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) { return gomilter.RespDiscard, nil }
		}, data: 250, queued: twoRcpts, discard: true},
		{name: "discard at RCPT", edit: func(f *fake) {
			f.rcpt = func(string, string) (*gomilter.Response, error) { return gomilter.RespDiscard, nil }
		}, data: 250, queued: twoRcpts, discard: true, noEOM: true},
		{name: "accept at MAIL skips the rest", edit: func(f *fake) {
			f.mail = func(string, string) (*gomilter.Response, error) { return gomilter.RespAccept, nil }
			f.eom = func(gomilter.Modifier, *fakeConn) (*gomilter.Response, error) { return gomilter.RespReject, nil }
		}, data: 250, queued: twoRcpts, noEOM: true},
		{name: "accept at connect skips the session", edit: func(f *fake) {
			f.connect = func(string, string, uint16, string) (*gomilter.Response, error) { return gomilter.RespAccept, nil }
			f.mail = func(string, string) (*gomilter.Response, error) { return gomilter.RespReject, nil }
		}, data: 250, queued: twoRcpts, noEOM: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, "tcp", c.edit)
			h := startServer(t, newMilter(t, f, nil))
			res := h.send("alice@sender.example", twoRcpts, testMessage)
			if c.mail == 0 {
				c.mail = 250
			}
			assert.Equal(t, c.mail, code(res.mail), "MAIL: %v", res.mail)
			last := res.mail
			if c.mail == 250 {
				if c.rcpts == nil {
					c.rcpts = []int{250, 250}
				}
				var got []int
				for _, err := range res.rcpts {
					got = append(got, code(err))
				}
				assert.Equal(t, c.rcpts, got, "RCPT: %v", res.rcpts)
				assert.Equal(t, c.data, code(res.data), "DATA: %v", res.data)
				last = res.data
			}
			if c.text != "" {
				require.Error(t, last)
				assert.Contains(t, last.Error(), c.text)
			}
			q := h.queue.all()
			if c.queued == nil {
				assert.Empty(t, q, "nothing queued")
			} else {
				require.Len(t, q, 1)
				assert.Equal(t, c.queued, q[0].rcpts)
				if c.discard {
					assert.Equal(t, "fake", q[0].discarded)
					assert.True(t, q[0].forced, "a discarded message is force-accepted")
					var route policy.Route
					tx := policy.NewTransaction(nil, "x")
					DiscardedKey.Set(tx, "fake")
					assert.Equal(t, policy.KindAccept, DiscardRule()(context.Background(), tx, policy.Recipient{}, &route).Kind)
					assert.Equal(t, "drop", route.Transport)
				} else {
					assert.Empty(t, q[0].discarded)
				}
			}
			if c.noEOM {
				assert.NotContains(t, f.Events(), "eom")
			}
		})
	}
}

// TestRejectAtConnect: the greeting carries the milter's refusal.
func TestRejectAtConnect(t *testing.T) {
	f := startFake(t, "tcp", func(f *fake) {
		f.connect = func(string, string, uint16, string) (*gomilter.Response, error) {
			return gomilter.RejectWithCodeAndReason(554, "5.7.1 Your network is listed")
		}
	})
	h := startServer(t, newMilter(t, f, nil))
	c, err := net.Dial("tcp", h.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	assert.True(t, strings.HasPrefix(string(b), "554 5.7.1 Your network is listed"), "%q", b)
}

// TestSession: two messages of one SMTP session share one milter
// connection; after QUIT it is closed once idle.
func TestSession(t *testing.T) {
	f := startFake(t, "tcp", nil)
	m := newMilter(t, f, func(o *Options) { o.IdleTimeout = 100 * time.Millisecond })
	h := startServer(t, m)
	c, err := gosmtp.Dial(h.addr)
	require.NoError(t, err)
	require.NoError(t, h.tx(c, "alice@sender.example", twoRcpts, testMessage).data)
	require.NoError(t, c.Reset())
	require.NoError(t, h.tx(c, "alice@sender.example", []string{"dave@rcpt.example"}, testMessage).data)
	require.NoError(t, c.Quit())
	f.waitClosed(t, 1)
	assert.Equal(t, 1, f.Conns())
	assert.Equal(t, 0, m.sessionCount())
	ev := f.Events()
	assert.Equal(t, 2, count(ev, "eom"))
	assert.Equal(t, "close", ev[len(ev)-1])
	assert.Len(t, h.queue.all(), 2)
	assert.NotEqual(t, f.Macro("mail", "i"), "", "queue ID")
}

func count(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}

// TestCatchUp: a milter whose mail rule an earlier rule's Accept skipped,
// and whose connection closes between every stage, still sees every
// stage in order.
func TestCatchUp(t *testing.T) {
	f := startFake(t, "tcp", nil)
	m := newMilter(t, f, func(o *Options) { o.IdleTimeout = time.Nanosecond })
	q := &memQueue{}
	chain := &policy.Chain{Logger: testLogger(t)}
	chain.Mail("accept", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Accept() })
	Register(chain, m)
	chain.Rcpt("accept-rcpt", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	addr := serve(t, chain, q)
	h := &harness{t: t, addr: addr, queue: q}
	require.NoError(t, h.send("alice@sender.example", twoRcpts, testMessage).data)
	ev := f.Events()
	// The last connection saw everything, from connect to the end.
	last := 0
	for i, e := range ev {
		if strings.HasPrefix(e, "connect ") {
			last = i
		}
	}
	tail := ev[last:]
	require.Contains(t, tail, "eom", "%q", ev)
	assert.Equal(t, []string{"helo client.test.example", "mail <alice@sender.example> BODY=8BITMIME"}, tail[1:3], "%q", ev)
	assert.Len(t, q.all(), 1)
}

// TestSeveralMilters: the second milter sees the message as the first
// left it.
func TestSeveralMilters(t *testing.T) {
	f1 := startFake(t, "tcp", func(f *fake) {
		f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
			return gomilter.RespContinue, m.AddHeader("X-First", "yes")
		}
	})
	f2 := startFake(t, "unix", func(f *fake) {
		f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
			return gomilter.RespContinue, m.AddHeader("X-Second", "yes")
		}
	})
	m1 := newMilter(t, f1, func(o *Options) { o.Name = "first" })
	m2 := newMilter(t, f2, func(o *Options) { o.Name = "second" })
	h := startServer(t, m1, m2)
	require.NoError(t, h.send("alice@sender.example", twoRcpts, testMessage).data)
	msgs := f2.Messages()
	require.Len(t, msgs, 1)
	assert.Contains(t, msgs[0], "X-First:yes\n\n")
	q := h.queue.all()
	require.Len(t, q, 1)
	assert.Contains(t, q[0].raw, "X-First: yes\r\nX-Second: yes\r\n\r\n")
}
