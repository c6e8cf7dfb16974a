package smtp

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestStages runs every verdict at every stage over a real socket.
func TestStages(t *testing.T) {
	denyPreq := func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
		return policy.Deny(550, "5.7.1", "Content refused")
	}
	type want struct {
		greeting int      // 0: 220
		helo     int      // 0: 250
		mail     int      // 0: 250
		rcpts    []int    // per recipient; nil: all 250
		data     int      // final DATA reply; 0: 250
		queued   []string // recipients of the queued message; nil: nothing queued
		quar     string
		text     string // substring of the deciding reply
	}
	rcpts := []string{"a@mx.test", "b@mx.test", "c@mx.test"}
	cases := []struct {
		name  string
		chain func(*policy.Chain)
		want  want
	}{
		{"accept", func(c *policy.Chain) {}, want{queued: rcpts}},
		{"connect deny", func(c *policy.Chain) {
			c.Connect("deny", func(context.Context, *policy.Conn) policy.Verdict { return policy.Deny(550, "5.7.1", "Go away") })
		}, want{greeting: 554, text: "554 5.7.1 Go away"}},
		{"connect fail", func(c *policy.Chain) {
			c.Connect("fail", func(context.Context, *policy.Conn) policy.Verdict { return policy.Fail(assert.AnError) })
		}, want{greeting: 421, text: "421 4.3.0"}},
		{"helo deny", func(c *policy.Chain) {
			c.Helo("deny", func(_ context.Context, _ *policy.Conn, h string) policy.Verdict {
				return policy.Deny(550, "5.7.1", "Bad HELO "+h)
			})
		}, want{helo: 550, text: "550 5.7.1 Bad HELO client.test"}},
		{"mail deny", func(c *policy.Chain) {
			c.Mail("deny", func(context.Context, *policy.Transaction) policy.Verdict {
				return policy.Deny(553, "5.7.1", "Sender refused")
			})
		}, want{mail: 553, text: "553 5.7.1 Sender refused"}},
		{"rcpt deny one of three", func(c *policy.Chain) {
			c.Rcpt("no-b", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
				if r.Addr.Local == "b" {
					return policy.Deny(550, "5.1.1", "No such user")
				}
				return policy.Next()
			})
		}, want{rcpts: []int{250, 550, 250}, queued: []string{"a@mx.test", "c@mx.test"}, text: "550 5.1.1 No such user"}},
		{"rcpt default deny", func(c *policy.Chain) {}, want{rcpts: []int{554, 554, 554}, text: "554 5.7.1 Relay access denied"}},
		{"preq deny", func(c *policy.Chain) { c.PreQ("deny", denyPreq) }, want{data: 550, text: "550 5.7.1 Content refused"}},
		{"preq info", func(c *policy.Chain) {
			c.PreQ("info", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
				return policy.Info(250, "2.6.0", "Scanned")
			})
		}, want{queued: rcpts, text: "250 2.6.0 Scanned (queued as"}},
		{"preq info without text", func(c *policy.Chain) {
			c.PreQ("info", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
				return policy.Info(250, "2.6.0", "")
			})
		}, want{queued: rcpts, text: "250 2.6.0 OK: queued as "}},
		{"preq info with another code is not used", func(c *policy.Chain) {
			c.PreQ("info", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
				return policy.Info(251, "2.1.5", "Forwarded")
			})
		}, want{queued: rcpts, text: "250 2.0.0 OK: queued as "}},
		{"force accept at rcpt skips preq", func(c *policy.Chain) {
			c.Rcpt("force", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict {
				return policy.ForceAccept()
			})
			c.PreQ("deny", denyPreq)
		}, want{queued: rcpts}},
		{"force accept at connect skips everything", func(c *policy.Chain) {
			c.Connect("force", func(context.Context, *policy.Conn) policy.Verdict { return policy.ForceAccept() })
			c.Mail("deny-mail", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Deny(550, "5.7.1", "no") })
			c.PreQ("deny", denyPreq)
		}, want{queued: rcpts}},
		{"quarantine at rcpt", func(c *policy.Chain) {
			c.Rcpt("q", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict {
				return policy.Quarantine("suspect")
			})
			c.PreQ("deny", denyPreq)
		}, want{queued: rcpts, quar: "suspect"}},
		{"quarantine at preq", func(c *policy.Chain) {
			c.PreQ("q", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
				return policy.Quarantine("virus")
			})
		}, want{queued: rcpts, quar: "virus"}},
		{"panicking mail rule", func(c *policy.Chain) {
			c.Mail("boom", func(context.Context, *policy.Transaction) policy.Verdict { panic("boom") })
		}, want{mail: 451, text: "451 4.3.0"}},
		{"panicking preq rule", func(c *policy.Chain) {
			c.PreQ("boom", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { panic("boom") })
		}, want{data: 451, text: "451 4.3.0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			chain := &policy.Chain{Logger: testLogger(t)}
			tc.chain(chain)
			if tc.name != "rcpt default deny" {
				chain.Rcpt("all", acceptAll)
			}
			h := start(t, Config{Chain: chain})
			c := dialRaw(t, h.addr())
			texts := []string{}
			code, text := c.reply()
			texts = append(texts, text)
			w := tc.want
			if w.greeting != 0 {
				assert.Equal(t, w.greeting, code)
				assert.Contains(t, text, w.text)
				assert.True(t, c.closed(), "connection must close after a refused greeting")
				return
			}
			require.Equal(t, 220, code, text)
			code, text = c.cmd("EHLO client.test")
			texts = append(texts, text)
			if w.helo != 0 {
				assert.Equal(t, w.helo, code)
				assert.Contains(t, text, w.text)
				// The session is not open: MAIL is refused.
				code, _ = c.cmd("MAIL FROM:<s@client.test>")
				assert.Equal(t, 502, code)
				return
			}
			require.Equal(t, 250, code, text)
			code, text = c.cmd("MAIL FROM:<s@client.test>")
			texts = append(texts, text)
			if w.mail != 0 {
				assert.Equal(t, w.mail, code)
				assert.Contains(t, text, w.text)
				assert.Empty(t, h.queue.all())
				// The server keeps serving: a clean transaction on a new
				// connection still reaches the rules' verdict, and the
				// session itself goes on.
				assert.Equal(t, 250, c.expectCode("RSET"))
				return
			}
			require.Equal(t, 250, code, text)
			accepted := 0
			for i, r := range rcpts {
				code, text = c.cmd("RCPT TO:<" + r + ">")
				texts = append(texts, text)
				want := 250
				if w.rcpts != nil {
					want = w.rcpts[i]
				}
				assert.Equal(t, want, code, text)
				if code == 250 {
					accepted++
				}
			}
			if accepted == 0 {
				assert.Equal(t, 502, c.expectCode("DATA")) // go-smtp: no recipients
				assert.Contains(t, strings.Join(texts, "\n"), w.text)
				return
			}
			c.expect("DATA", 354)
			c.send(simpleBody + ".\r\n")
			code, text = c.reply()
			texts = append(texts, text)
			wantData := 250
			if w.data != 0 {
				wantData = w.data
			}
			assert.Equal(t, wantData, code, text)
			if w.text != "" {
				assert.Contains(t, strings.Join(texts, "\n"), w.text)
			}
			c.expect("QUIT", 221)
			msgs := h.queue.all()
			if w.queued == nil {
				assert.Empty(t, msgs)
				return
			}
			require.Len(t, msgs, 1)
			assert.Equal(t, w.queued, msgs[0].Rcpts)
			assert.Equal(t, w.quar, msgs[0].Quarantine)
			assert.Equal(t, "s@client.test", msgs[0].From)
			assert.Contains(t, text, msgs[0].ID, "250 carries the queue ID")
		})
	}
}

func (c *rawConn) expectCode(line string) int {
	code, _ := c.cmd(line)
	return code
}

// TestPanicKeepsServing checks that a panicking rule does not take the
// server down: the next connection is served normally.
func TestPanicKeepsServing(t *testing.T) {
	var n int
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		Mail("boom-once", func(context.Context, *policy.Transaction) policy.Verdict {
			n++
			if n == 1 {
				panic("boom")
			}
			return policy.Next()
		})
	h := start(t, Config{Chain: chain})
	err := sendMail(t, h.addr(), "s@client.test", []string{"a@mx.test"}, simpleBody)
	require.Error(t, err)
	assert.Equal(t, 451, smtpCode(err))
	require.NoError(t, sendMail(t, h.addr(), "s@client.test", []string{"a@mx.test"}, simpleBody))
	assert.Len(t, h.queue.all(), 1)
}

// TestSecondEHLO checks that the helo rules run again when a later EHLO
// changes the name, and that their refusal holds at MAIL.
func TestSecondEHLO(t *testing.T) {
	var seen []string
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		Helo("no-bad", func(_ context.Context, c *policy.Conn, h string) policy.Verdict {
			seen = append(seen, h)
			if h == "bad.test" {
				return policy.Deny(550, "5.7.1", "Bad HELO")
			}
			return policy.Next()
		})
	h := start(t, Config{Chain: chain})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO good.test", 250)
	c.expect("EHLO bad.test", 250) // go-smtp answers a second EHLO itself
	assert.Contains(t, c.expect("MAIL FROM:<s@client.test>", 550), "Bad HELO")
	c.expect("EHLO good.test", 250)
	c.expect("MAIL FROM:<s@client.test>", 250)
	assert.Equal(t, []string{"good.test", "bad.test", "good.test"}, seen)
}

// TestReceivedHeader checks the Received field and the fields rules added
// before DATA are on top of the queued message, in that order.
func TestReceivedHeader(t *testing.T) {
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		Mail("spf", policy.MailAction(func(_ context.Context, tx *policy.Transaction) {
			tx.Header.Add("Received-SPF", "pass (test) client-ip=127.0.0.1")
		}))
	h := start(t, Config{Chain: chain})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO evil\x01host(x)", 250)
	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, text := c.reply()
	require.Equal(t, 250, code, text)
	msgs := h.queue.all()
	require.Len(t, msgs, 1)
	m := msgs[0]
	lines := strings.Split(m.Data, "\r\n")
	// Received-SPF above our Received (RFC 7208 section 9.1), then the
	// client's own fields.
	require.Equal(t, "Received-SPF: pass (test) client-ip=127.0.0.1", lines[0])
	require.True(t, strings.HasPrefix(lines[1], "Received: from evil?host?x? (unknown [127.0.0.1])"), lines[1])
	unfolded := strings.ReplaceAll(m.Data, "\r\n\t", " ")
	unfolded = strings.ReplaceAll(unfolded, "\r\n ", " ")
	received := strings.SplitN(unfolded, "\r\n", 3)[1]
	assert.Contains(t, received, "by mx.test with ESMTP id "+m.ID+" for <a@mx.test>; ")
	assert.Contains(t, unfolded, received+"\r\nFrom: a@client.test\r\n")
	assert.True(t, strings.HasSuffix(m.Data, "\r\n\r\nHello.\r\n"))
}
