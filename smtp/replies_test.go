package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// openSession opens a session on the listener of h named by how: "plain"
// (mta, plaintext), "starttls" (mta after STARTTLS and a second EHLO) or
// "implicit" (smtps). It returns the client after the EHLO reply.
func openSession(t *testing.T, h *harness, how string) *rawConn {
	t.Helper()
	switch how {
	case "implicit", "implicit-noauth": // AUTH is required there
		c := dialTLSRaw(t, h.addrs["smtps"])
		c.reply()
		c.expect("EHLO client.test", 250)
		if how == "implicit" {
			c.expect("AUTH PLAIN "+b64("\x00alice\x00secret"), 235)
		}
		return c
	case "starttls":
		c := dialRaw(t, h.addrs["mta"])
		c.reply()
		c.expect("EHLO client.test", 250)
		require.Equal(t, "220 2.0.0 Ready to start TLS", c.expect("STARTTLS", 220))
		tc := tls.Client(c.Conn, clientTLS())
		require.NoError(t, tc.Handshake())
		tr := &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
		tr.expect("EHLO client.test", 250)
		return tr
	}
	c := dialRaw(t, h.addrs["mta"])
	c.reply()
	c.expect("EHLO client.test", 250)
	return c
}

var transports = []string{"plain", "starttls", "implicit"}

func tlsServer(t *testing.T, cfg Config) *harness {
	cfg.TLSConfig = testTLS(t)
	if cfg.Authenticator == nil {
		cfg.Authenticator = users
	}
	return start(t, cfg, Listener{Name: "mta", Role: RoleMTA}, Listener{Name: "smtps", Role: RoleImplicitTLS})
}

// TestPositiveReplies: MAIL and RCPT get 250 2.1.0 and 250 2.1.5 (RFC
// 3463), not go-smtp's 2.0.0, on every kind of connection.
func TestPositiveReplies(t *testing.T) {
	h := tlsServer(t, Config{})
	for _, how := range transports {
		t.Run(how, func(t *testing.T) {
			c := openSession(t, h, how)
			assert.Equal(t, "250 2.1.0 Sender OK", c.expect("MAIL FROM:<a@client.test>", 250))
			assert.Equal(t, "250 2.1.5 Recipient OK", c.expect("RCPT TO:<b@mx.test>", 250))
			c.expect("DATA", 354)
			text := c.expect(simpleBody+".", 250)
			assert.True(t, strings.HasPrefix(text, "250 2.0.0 OK: queued as "), text)
			assert.Equal(t, "221 2.0.0 Bye", c.expect("QUIT", 221))
		})
	}
}

// TestStageReplies: an Info or Accept reply of a rule is what the client
// gets at every stage, sanitized, with the stage's enhanced code when the
// rule gives none or a wrong one.
func TestStageReplies(t *testing.T) {
	info := func(code int, enh, text string) policy.Verdict { return policy.Info(code, enh, text) }
	acceptWith := func(code int, enh, text string) policy.Verdict {
		return policy.Verdict{Kind: policy.KindAccept, Reply: policy.Reply{Code: code, Enhanced: enh, Text: text}}
	}
	for _, tc := range []struct {
		name    string
		stage   policy.Stage
		verdict policy.Verdict
		want    string // the reply line at that stage
	}{
		{"connect info", policy.StageConnect, info(220, "", "Welcome, family"), "220 mx.test Welcome, family"},
		{"helo info", policy.StageHelo, info(250, "", "pleased to meet you"), "250-mx.test pleased to meet you"},
		{"connect info with another code", policy.StageConnect, info(250, "", "Welcome"), "220 mx.test Welcome"},
		{"auth info", policy.StageAuth, info(235, "2.7.0", "Welcome back"), "235 2.7.0 Welcome back"},
		{"auth default", policy.StageAuth, policy.Next(), "235 2.7.0 Authentication succeeded"},
		{"mail info", policy.StageMail, info(250, "2.1.0", "Sender OK, SPF pass"), "250 2.1.0 Sender OK, SPF pass"},
		{"mail info without enhanced code", policy.StageMail, info(250, "", "Fine"), "250 2.1.0 Fine"},
		{"mail info of the wrong class", policy.StageMail, info(250, "5.1.0", "Fine"), "250 2.1.0 Fine"},
		{"mail info 2.0.0 kept", policy.StageMail, info(250, "2.0.0", "Fine"), "250 2.0.0 Fine"},
		{"mail info with a code MAIL cannot have", policy.StageMail, info(251, "2.1.0", "Fine"), "250 2.1.0 Fine"},
		{"mail info sanitized", policy.StageMail, info(250, "2.1.0", "a\r\n250 2.1.0 b"), "250 2.1.0 a  250 2.1.0 b"},
		{"mail info empty text", policy.StageMail, info(250, "2.1.0", ""), "250 2.1.0 Sender OK"},
		{"mail accept with reply", policy.StageMail, acceptWith(250, "2.1.0", "Known sender"), "250 2.1.0 Known sender"},
		{"mail accept without reply", policy.StageMail, policy.Accept(), "250 2.1.0 Sender OK"},
		{"rcpt accept with reply", policy.StageRcpt, acceptWith(250, "2.1.5", "Mailbox exists"), "250 2.1.5 Mailbox exists"},
		{"rcpt 251", policy.StageRcpt, acceptWith(251, "2.1.5", "User not local; will forward"), "251 2.1.5 User not local; will forward"},
		{"rcpt info then accept", policy.StageRcpt, info(250, "2.1.5", "Noted"), "250 2.1.5 Noted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain := &policy.Chain{Logger: testLogger(t)}
			switch tc.stage {
			case policy.StageConnect:
				chain.Connect("r", func(context.Context, *policy.Conn) policy.Verdict { return tc.verdict })
			case policy.StageHelo:
				chain.Helo("r", func(context.Context, *policy.Conn, string) policy.Verdict { return tc.verdict })
			case policy.StageAuth:
				chain.Auth("r", func(context.Context, *policy.Conn, policy.AuthInfo) policy.Verdict { return tc.verdict })
			case policy.StageMail:
				chain.Mail("r", func(context.Context, *policy.Transaction) policy.Verdict { return tc.verdict })
			case policy.StageRcpt:
				chain.Rcpt("r", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return tc.verdict })
			}
			if tc.stage != policy.StageRcpt || tc.verdict.Kind == policy.KindInfo {
				chain.Rcpt("all", acceptAll)
			}
			h := tlsServer(t, Config{Chain: chain})
			for _, how := range transports {
				t.Run(how, func(t *testing.T) {
					if how == "starttls" && tc.stage == policy.StageConnect {
						t.Skip("the greeting is before STARTTLS")
					}
					var c *rawConn
					if tc.stage == policy.StageConnect {
						if how == "implicit" {
							c = dialTLSRaw(t, h.addrs["smtps"])
						} else {
							c = dialRaw(t, h.addrs["mta"])
						}
						_, text := c.reply()
						assert.Equal(t, tc.want, text)
						return
					}
					if tc.stage == policy.StageHelo {
						if how == "plain" {
							c = dialRaw(t, h.addrs["mta"])
							c.reply()
							assert.Equal(t, "250 mx.test pleased to meet you", c.expect("HELO client.test", 250), "HELO")
						}
						c = openSession(t, h, how) // the EHLO after STARTTLS too
						text := c.expect("EHLO client.test", 250)
						assert.Equal(t, tc.want, strings.Split(text, "\n")[0])
						assert.Equal(t, how == "plain", strings.Contains(text, "250-STARTTLS"), text)
						c.expect("MAIL FROM:<a@client.test>", 250) // ESMTP recognized
						return
					}
					if tc.stage == policy.StageAuth {
						if how == "plain" {
							t.Skip("no AUTH without TLS on the MTA listener")
						}
						c = openSession(t, h, strings.Replace(how, "implicit", "implicit-noauth", 1))
						_, text := c.cmd("AUTH PLAIN " + b64("\x00alice\x00secret"))
						assert.Equal(t, tc.want, text)
						return
					}
					c = openSession(t, h, how)
					_, text := c.cmd("MAIL FROM:<a@client.test>")
					if tc.stage == policy.StageMail {
						assert.Equal(t, tc.want, text)
						return
					}
					_, text = c.cmd("RCPT TO:<b@mx.test>")
					assert.Equal(t, tc.want, text)
				})
			}
		})
	}
}

// TestBarePostmaster: "RCPT TO:<postmaster>" without a domain (RFC 5321
// section 4.5.1) reaches the rcpt rules as postmaster@PostmasterDomain, and
// the message is queued for that address.
func TestBarePostmaster(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("local", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		mu.Lock()
		seen = append(seen, r.Addr.String())
		mu.Unlock()
		if r.Addr.Domain == "doe.test" {
			return policy.Accept()
		}
		return policy.Deny(550, "5.1.1", "No such user")
	})
	h := tlsServer(t, Config{Chain: chain, PostmasterDomain: "Doe.Test."})
	for _, tc := range []struct {
		rcpt string
		code int
		seen string // the address the rule saw; "" none
	}{
		{"RCPT TO:<postmaster>", 250, "postmaster@doe.test"},
		{"RCPT TO:<PostMaster>", 250, "postmaster@doe.test"},
		{"rcpt to: <POSTMASTER>", 250, "postmaster@doe.test"},
		{"RCPT TO:<postmaster@doe.test>", 250, "postmaster@doe.test"},
		{"RCPT TO:<postmaster@elsewhere.test>", 550, "postmaster@elsewhere.test"},
		{"RCPT TO:<postmasters>", 501, ""},
		{"RCPT TO:<postmaster>x", 501, ""},
		{"RCPT TO:<@relay.test:postmaster>", 501, ""},
	} {
		for _, how := range transports {
			t.Run(how+" "+tc.rcpt, func(t *testing.T) {
				mu.Lock()
				seen = nil
				mu.Unlock()
				c := openSession(t, h, how)
				c.expect("MAIL FROM:<a@client.test>", 250)
				text := c.expect(tc.rcpt, tc.code)
				mu.Lock()
				got := append([]string(nil), seen...)
				mu.Unlock()
				if tc.seen == "" {
					assert.Empty(t, got)
					return
				}
				assert.Equal(t, []string{tc.seen}, got)
				if tc.code != 250 {
					return
				}
				assert.Equal(t, "250 2.1.5 Recipient OK", text)
				c.expect("DATA", 354)
				reply := c.expect(simpleBody+".", 250)
				id := reply[strings.LastIndexByte(reply, ' ')+1:]
				for _, m := range h.queue.all() {
					if m.ID == id {
						assert.Equal(t, []string{tc.seen}, m.Rcpts)
						return
					}
				}
				t.Fatalf("message %s not queued", id)
			})
		}
	}
}

// TestBarePostmasterDefaultDomain: without PostmasterDomain, the bare
// postmaster is the host name's.
func TestBarePostmasterDefaultDomain(t *testing.T) {
	got := make(chan string, 1)
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("r", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		got <- r.Addr.String()
		return policy.Accept()
	})
	h := start(t, Config{Chain: chain, Hostname: "MX.Doe.Test"})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("MAIL FROM:<>", 250)
	c.expect("RCPT TO:<Postmaster>", 250)
	assert.Equal(t, "postmaster@mx.doe.test", <-got)
}

func TestPostmasterDomainConfig(t *testing.T) {
	_, err := NewServer(Config{Chain: &policy.Chain{}, Queue: newFileQueue(t), SpoolDir: t.TempDir(), PostmasterDomain: "not a domain"})
	assert.ErrorIs(t, err, ErrConfig)
}

// TestSTARTTLSCommand: STARTTLS takes no parameter (RFC 3207 section 4);
// one gets 501 5.5.4 and no handshake, and the session goes on.
func TestSTARTTLSCommand(t *testing.T) {
	h := start(t, Config{TLSConfig: testTLS(t), Authenticator: users},
		Listener{Name: "mta", Role: RoleMTA},
		Listener{Name: "submission", Role: RoleSubmission, AllowInsecureAuth: true},
		Listener{Name: "smtps", Role: RoleImplicitTLS})
	for _, tc := range []struct {
		name     string
		listener string
		before   []string // commands before, each expected to succeed
		line     string
		want     string
	}{
		{"parameter", "mta", nil, "STARTTLS STARTTLS", "501 5.5.4 Syntax: STARTTLS takes no parameters"},
		{"parameter, lower case", "mta", nil, "starttls now", "501 5.5.4 Syntax: STARTTLS takes no parameters"},
		{"parameter before EHLO", "mta", []string{}, "STARTTLS x", "501 5.5.4 Syntax: STARTTLS takes no parameters"},
		{"not the command", "mta", nil, "STARTTLSX", "500 5.5.2 Syntax error, command unrecognized"},
		{"trailing space is no parameter", "mta", nil, "STARTTLS ", "220 2.0.0 Ready to start TLS"},
		{"over implicit TLS", "smtps", nil, "STARTTLS", "502 5.5.1 Already running in TLS"},
		{"parameter over implicit TLS", "smtps", nil, "STARTTLS STARTTLS", "501 5.5.4 Syntax: STARTTLS takes no parameters"},
		{"in a transaction", "mta", []string{"MAIL FROM:<a@client.test>"}, "STARTTLS", "503 5.5.1 STARTTLS not allowed during a mail transaction"},
		{"after AUTH", "submission", []string{"AUTH PLAIN " + b64("\x00alice\x00secret")}, "STARTTLS", "503 5.5.1 STARTTLS not allowed after AUTH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *rawConn
			if tc.listener == "smtps" {
				c = dialTLSRaw(t, h.addrs[tc.listener])
			} else {
				c = dialRaw(t, h.addrs[tc.listener])
			}
			c.reply()
			if tc.before == nil {
				c.expect("EHLO client.test", 250)
			}
			for _, cmd := range tc.before {
				c.expect("EHLO client.test", 250)
				code, text := c.cmd(cmd)
				require.Less(t, code, 400, text)
			}
			_, text := c.cmd(tc.line)
			assert.Equal(t, tc.want, text)
			if strings.HasPrefix(text, "220") {
				return
			}
			// No handshake: the session goes on in the clear.
			assert.Equal(t, "250 2.0.0 I have successfully done nothing", c.expect("NOOP", 250))
			c.expect("EHLO client.test", 250)
			if tc.listener != "smtps" {
				c.expect("MAIL FROM:<a@client.test>", 250)
			}
		})
	}
}

// TestSTARTTLSResets: after STARTTLS the client must say EHLO again, the
// helo rules run again for the same name, and AUTH is offered.
func TestSTARTTLSResets(t *testing.T) {
	var mu sync.Mutex
	var helos []bool // TLS at each helo evaluation
	chain := (&policy.Chain{Logger: testLogger(t)}).
		Helo("count", func(_ context.Context, c *policy.Conn, _ string) policy.Verdict {
			mu.Lock()
			helos = append(helos, c.TLS != nil)
			mu.Unlock()
			return policy.Next()
		}).
		Rcpt("all", acceptAll)
	h := tlsServer(t, Config{Chain: chain})
	c := dialRaw(t, h.addrs["mta"])
	c.reply()
	text := c.expect("EHLO client.test", 250)
	assert.Contains(t, text, "250-STARTTLS")
	assert.NotContains(t, text, "AUTH")
	c.expect("AUTH PLAIN "+b64("\x00alice\x00secret"), 523)
	c.expect("MAIL FROM:<a@client.test>", 250)
	c.expect("STARTTLS", 503) // in a transaction
	c.expect("RSET", 250)
	c.expect("STARTTLS", 220)
	tc := tls.Client(c.Conn, clientTLS())
	require.NoError(t, tc.Handshake())
	tr := &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
	assert.Equal(t, "503 5.5.1 Send EHLO first", tr.expect("MAIL FROM:<a@client.test>", 503))
	assert.Equal(t, "503 5.5.1 Send EHLO first", tr.expect("AUTH PLAIN "+b64("\x00alice\x00secret"), 503))
	tr.expect("RCPT TO:<b@mx.test>", 502)
	text = tr.expect("EHLO client.test", 250)
	assert.NotContains(t, text, "STARTTLS")
	assert.Contains(t, text, "AUTH PLAIN LOGIN")
	tr.expect("AUTH PLAIN "+b64("\x00alice\x00secret"), 235)
	tr.expect("MAIL FROM:<a@client.test>", 250)
	mu.Lock()
	assert.Equal(t, []bool{false, true}, helos, "the helo rules ran again, over TLS")
	mu.Unlock()
}

// TestSTARTTLSHandshakeFails: a client that answers 220 with no TLS
// handshake is disconnected (go-smtp went on in the clear after a "550
// Handshake error").
func TestSTARTTLSHandshakeFails(t *testing.T) {
	h := tlsServer(t, Config{})
	c := dialRaw(t, h.addrs["mta"])
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("STARTTLS", 220)
	c.send("EHLO client.test\r\n")
	assert.True(t, c.closed())
	c2 := dialRaw(t, h.addrs["mta"]) // the server goes on
	c2.reply()
	c2.expect("EHLO client.test", 250)
}
