package policytest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// relay accepts recipients of example.com, and any recipient for an
// authenticated client.
func relay(_ context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
	if r.Addr.Domain == "example.com" || tx.Conn.Authenticated() {
		return policy.Accept()
	}
	return policy.Next()
}

func denyAt(s policy.Stage) *policy.Chain {
	c := policy.NewChain().Rcpt("relay", relay)
	deny := policy.Deny(550, "5.7.1", "denied at "+s.String())
	switch s {
	case policy.StageConnect:
		c.Connect("deny", func(context.Context, *policy.Conn) policy.Verdict {
			return policy.Deny(554, "5.7.1", "denied at connect")
		})
	case policy.StageHelo:
		c.Helo("deny", func(context.Context, *policy.Conn, string) policy.Verdict { return deny })
	case policy.StageAuth:
		c.Auth("deny", func(context.Context, *policy.Conn, policy.AuthInfo) policy.Verdict {
			return policy.Deny(535, "5.7.8", "denied at auth")
		})
	case policy.StageMail:
		c.Mail("deny", func(context.Context, *policy.Transaction) policy.Verdict { return deny })
	case policy.StagePreQ:
		c.PreQ("deny", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { return deny })
	case policy.StagePostQ:
		c.PostQ("deny", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { return deny })
	}
	return c
}

func TestRunStopsWhereAServerWould(t *testing.T) {
	session := policytest.Session{From: "alice@example.org", Rcpts: []string{"bob@example.com"}, AuthUser: "alice"}
	tests := []struct {
		stage    policy.Stage
		wantCode int
		hasTx    bool
		hasMsg   bool
	}{
		{policy.StageConnect, 554, false, false},
		{policy.StageHelo, 550, false, false},
		{policy.StageAuth, 535, false, false},
		{policy.StageMail, 550, true, false},
		{policy.StagePreQ, 550, true, true},
		{policy.StagePostQ, 550, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.stage.String(), func(t *testing.T) {
			c := denyAt(tt.stage)
			out, err := policytest.Run(context.Background(), c, session)
			require.NoError(t, err)
			assert.Equal(t, tt.stage, out.Stopped)
			assert.Equal(t, tt.wantCode, out.Final().Reply.Code)
			assert.Equal(t, "deny", out.Final().Rule)
			assert.Equal(t, tt.hasTx, out.Tx != nil)
			assert.Equal(t, tt.hasMsg, out.Message != nil)
			assert.Empty(t, out.Delivery)
		})
	}
}

// spfKey is the key the rules of TestRunThrough share.
const spfKey policy.Key[string] = "policytest_test.spf"

func TestRunThrough(t *testing.T) {
	rec := &policytest.Recorder{}
	c := &policy.Chain{Observer: rec.Observe}
	c.Connect("conn", func(_ context.Context, conn *policy.Conn) policy.Verdict {
		if conn.Helo != "" {
			return policy.Deny(554, "5.5.1", "HELO before connect")
		}
		return policy.Next()
	})
	c.Helo("helo", func(_ context.Context, conn *policy.Conn, helo string) policy.Verdict {
		if helo != conn.Helo || !conn.ESMTP {
			return policy.Deny(501, "5.5.4", "inconsistent")
		}
		return policy.Next()
	})
	c.Mail("spf", func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		spfKey.Set(tx, "pass")
		tx.Header.Add("Received-SPF", "pass (test) client-ip=192.0.2.1")
		return policy.Info(250, "2.1.0", "Sender OK, SPF pass")
	})
	c.Rcpt("relay", relay)
	c.PreQ("tag", func(_ context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		spf, _ := spfKey.Get(tx)
		m.Header.Add("Authentication-Results", "mx.example.com; spf="+spf)
		return policy.Next()
	})
	c.PostQ("sign", func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
		m.Header.AddRaw([]byte("DKIM-Signature: v=1; d=example.com\r\n"))
		return policy.Next()
	})
	c.Delivery("route", func(_ context.Context, _ *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
		if r.Addr.Domain == "example.com" {
			route.Transport, route.Target = "maildir", r.Addr.Local
		} else {
			route.Transport = "smtp"
		}
		return policy.Next()
	})

	out, err := policytest.Run(context.Background(), c, policytest.Session{
		Remote:  "198.51.100.7:2525",
		Helo:    "mx.example.org",
		From:    "<alice@example.org>",
		Params:  policy.MailParams{Size: 1234, Body: "8BITMIME"},
		Rcpts:   []string{"bob@example.com", "eve@elsewhere.example", "<carol@EXAMPLE.com>"},
		Message: "From: alice@example.org\nSubject: hello\n\nline one\nline two",
	})
	require.NoError(t, err)
	assert.Zero(t, out.Stopped)
	assert.Equal(t, "198.51.100.7:2525", out.Conn.Remote.String())
	assert.Equal(t, "mx.example.org", out.Conn.Helo)
	assert.Equal(t, "Sender OK, SPF pass", out.Mail.Reply.Text)
	require.Len(t, out.Rcpts, 3)
	assert.True(t, out.Rcpts[0].Accepted())
	assert.Equal(t, policy.Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}, out.Rcpts[1].Reply)
	assert.True(t, out.Rcpts[2].Accepted())
	require.Len(t, out.Accepted, 2)
	assert.Equal(t, "carol@example.com", out.Accepted[1].Addr.String())
	assert.Equal(t, out.Accepted, out.Tx.Rcpts)
	assert.Equal(t, int64(1234), out.Tx.Params.Size)
	assert.Equal(t, policy.DefaultReply(policy.StagePreQ), out.Final().Reply)

	want := "DKIM-Signature: v=1; d=example.com\r\n" +
		"Authentication-Results: mx.example.com; spf=pass\r\n" +
		"Received-SPF: pass (test) client-ip=192.0.2.1\r\n" +
		"Received: from mx.example.org ([198.51.100.7]) by policytest.invalid with\r\n ESMTP id policytest-1; Mon, 01 Jan 2024 00:00:00 +0000\r\n" +
		"From: alice@example.org\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"
	b, err := io.ReadAll(out.Message.Reader())
	require.NoError(t, err)
	assert.Equal(t, want, string(b), "Received and tx.Header on top before preq, LF made CRLF, final CRLF added")

	require.Len(t, out.Delivery, 2)
	assert.Equal(t, policy.Route{Transport: "maildir", Target: "bob"}, out.Delivery[0].Route)
	assert.Equal(t, policy.Route{Transport: "maildir", Target: "carol"}, out.Delivery[1].Route)
	assert.Equal(t, "carol@example.com", out.Delivery[1].Rcpt.Addr.String())

	assert.Equal(t, []string{"conn", "helo", "spf", "relay", "relay", "relay", "tag", "sign", "route", "route"}, rec.Rules())
	assert.True(t, rec.Ran("sign"))
	assert.False(t, rec.Ran("nope"))
	assert.Len(t, rec.Decisions(), 10)
	rec.Reset()
	assert.Empty(t, rec.Rules())
}

func TestRunNoRecipientAccepted(t *testing.T) {
	rec := &policytest.Recorder{}
	c := (&policy.Chain{Observer: rec.Observe}).Rcpt("relay", relay)
	c.PreQ("never", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { return policy.Next() })
	out, err := policytest.Run(context.Background(), c, policytest.Session{
		From:  "alice@example.org",
		Rcpts: []string{"a@elsewhere.example", "b@elsewhere.example"},
	})
	require.NoError(t, err)
	assert.Equal(t, policy.StageRcpt, out.Stopped)
	assert.Empty(t, out.Accepted)
	assert.Equal(t, 554, out.Final().Reply.Code)
	assert.Nil(t, out.Message)
	assert.False(t, rec.Ran("never"))

	// An empty chain is not an open relay.
	out, err = policytest.Run(context.Background(), policy.NewChain(), policytest.Session{Rcpts: []string{"x@example.net"}})
	require.NoError(t, err)
	assert.Equal(t, policy.StageRcpt, out.Stopped)
}

func TestRunAuth(t *testing.T) {
	c := policy.NewChain().Rcpt("relay", relay)
	var seen policy.AuthInfo
	c.Auth("who", func(_ context.Context, conn *policy.Conn, a policy.AuthInfo) policy.Verdict {
		seen = a
		if conn.TLS == nil {
			return policy.Deny(538, "5.7.11", "Encryption required")
		}
		return policy.Next()
	})
	s := policytest.Session{AuthUser: "alice", AuthMechanism: "LOGIN", Rcpts: []string{"x@elsewhere.example"}}
	out, err := policytest.Run(context.Background(), c, s)
	require.NoError(t, err)
	assert.Equal(t, policy.StageAuth, out.Stopped)
	assert.False(t, out.Conn.Authenticated())
	assert.Equal(t, policy.AuthInfo{Mechanism: "LOGIN", Identity: "alice"}, seen)

	s.TLS = true
	out, err = policytest.Run(context.Background(), c, s)
	require.NoError(t, err)
	assert.Zero(t, out.Stopped)
	assert.Equal(t, "alice", out.Conn.AuthUser)
	assert.Equal(t, uint16(tls.VersionTLS13), out.Conn.TLS.Version)
	assert.True(t, out.Rcpts[0].Accepted(), "authenticated clients may relay")
	assert.Contains(t, out.Message.Header.Get("Received"), "with ESMTPSA id")

	// Without AuthUser the auth stage does not run.
	s.AuthUser = ""
	seen = policy.AuthInfo{}
	out, err = policytest.Run(context.Background(), c, s)
	require.NoError(t, err)
	assert.Zero(t, seen)
	assert.Equal(t, policy.StageRcpt, out.Stopped)
}

func TestRunQuarantineAndForceAccept(t *testing.T) {
	rec := &policytest.Recorder{}
	c := (&policy.Chain{Observer: rec.Observe}).Rcpt("relay", relay)
	c.PreQ("av", func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
		if strings.Contains(m.Header.Get("Subject"), "virus") {
			return policy.Quarantine("virus")
		}
		return policy.Next()
	})
	c.PostQ("post", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { return policy.Next() })
	c.Delivery("route", func(context.Context, *policy.Transaction, policy.Recipient, *policy.Route) policy.Verdict {
		return policy.Next()
	})
	out, err := policytest.Run(context.Background(), c, policytest.Session{
		Rcpts:   []string{"bob@example.com"},
		Message: "Subject: a virus\r\n\r\nX5O!P%@AP\r\n",
	})
	require.NoError(t, err)
	assert.Zero(t, out.Stopped, "quarantine is an acceptance")
	assert.Equal(t, "virus", out.Quarantine)
	assert.True(t, out.PreQ.Accepted())
	assert.Equal(t, "(skipped)", out.PostQ.Rule)
	assert.Empty(t, out.Delivery)
	assert.False(t, rec.Ran("post"))
	assert.False(t, rec.Ran("route"))

	// Force-accept at connect: the later filtering rules are skipped, the
	// delivery rules run.
	rec2 := &policytest.Recorder{}
	c2 := &policy.Chain{Observer: rec2.Observe}
	c2.Connect("internal", func(_ context.Context, conn *policy.Conn) policy.Verdict {
		if conn.Remote.Addr().IsPrivate() {
			return policy.ForceAccept()
		}
		return policy.Next()
	})
	c2.Rcpt("relay", relay)
	c2.Delivery("route", func(_ context.Context, _ *policy.Transaction, _ policy.Recipient, r *policy.Route) policy.Verdict {
		r.Transport = "smtp"
		return policy.Next()
	})
	out, err = policytest.Run(context.Background(), c2, policytest.Session{Remote: "10.1.2.3", Rcpts: []string{"x@elsewhere.example"}})
	require.NoError(t, err)
	assert.Zero(t, out.Stopped)
	assert.Equal(t, []string{"internal", "route"}, rec2.Rules())
	require.Len(t, out.Delivery, 1)
	assert.Equal(t, "smtp", out.Delivery[0].Route.Transport)
}

func TestRunDefaultsAndErrors(t *testing.T) {
	c := policy.NewChain().Rcpt("relay", relay)
	out, err := policytest.Run(context.Background(), c, policytest.Session{Rcpts: []string{"bob@example.com"}})
	require.NoError(t, err)
	assert.Equal(t, policytest.DefaultRemote, out.Conn.Remote.String())
	assert.Equal(t, policytest.DefaultLocal, out.Conn.Local.String())
	assert.Equal(t, policytest.DefaultListener, out.Conn.Listener)
	assert.Equal(t, policytest.DefaultHelo, out.Conn.Helo)
	assert.Nil(t, out.Conn.TLS)
	assert.True(t, out.Tx.From.IsNull())
	assert.Equal(t, "<bob@example.com>", out.Message.Header.Get("To"))
	assert.Equal(t, "policytest", out.Message.Header.Get("Subject"))
	assert.False(t, out.Message.Header.Has("From"), "no From for the null sender")

	for name, s := range map[string]policytest.Session{
		"bad remote": {Remote: "not-an-ip"},
		"bad local":  {Local: "300.1.1.1:25"},
		"bad from":   {From: "a b@example.com"},
		"bad rcpt":   {Rcpts: []string{"nodomain"}},
		"null rcpt":  {Rcpts: []string{"<>"}},
		"big header": {Rcpts: []string{"bob@example.com"}, Message: "X: " + strings.Repeat("a", policy.MaxHeaderBytes) + "\r\n\r\n"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := policytest.Run(context.Background(), c, s)
			assert.Error(t, err)
		})
	}
}

func TestRunPassesContext(t *testing.T) {
	type ctxKey struct{}
	c := policy.NewChain()
	var got any
	c.Connect("ctx", func(ctx context.Context, _ *policy.Conn) policy.Verdict {
		got = ctx.Value(ctxKey{})
		return policy.Next()
	})
	_, err := policytest.Run(context.WithValue(context.Background(), ctxKey{}, "v"), c, policytest.Session{})
	require.NoError(t, err)
	assert.Equal(t, "v", got)
}

func TestBuilders(t *testing.T) {
	cert := &x509.Certificate{}
	s := policytest.Session{
		Remote: "2001:db8::5", Listener: "submission", ReverseName: "client.example.org.",
		Helo: "client.example.org", AuthUser: "alice",
		TLSState: &tls.ConnectionState{Version: tls.VersionTLS12, PeerCertificates: []*x509.Certificate{cert}},
		From:     `"a@b"@example.org`, Rcpts: []string{"x@example.com", "y@example.com"},
		Params: policy.MailParams{SMTPUTF8: true},
	}
	conn := policytest.Conn(s)
	assert.Equal(t, "[2001:db8::5]:0", conn.Remote.String())
	assert.Equal(t, "submission", conn.Listener)
	assert.Equal(t, "client.example.org", conn.Helo)
	assert.True(t, conn.ESMTP)
	assert.Equal(t, "alice", conn.AuthUser)
	assert.Equal(t, "PLAIN", conn.AuthMechanism)
	assert.Same(t, cert, conn.TLS.PeerCertificates[0])

	tx := policytest.Transaction(s)
	assert.Equal(t, "a@b", tx.From.Local)
	assert.True(t, tx.Params.SMTPUTF8)
	require.Len(t, tx.Rcpts, 2)
	assert.Equal(t, "y@example.com", tx.Rcpts[1].Addr.String())
	assert.Same(t, tx.Conn.TLS, s.TLSState)

	assert.Equal(t, "z@example.com", policytest.Recipient("<z@EXAMPLE.com>").Addr.String())
	assert.Panics(t, func() { policytest.Recipient("<>") })
	assert.Panics(t, func() { policytest.Conn(policytest.Session{Remote: "x"}) })
	assert.Panics(t, func() { policytest.Transaction(policytest.Session{From: "bad"}) })

	m := policytest.Message(t, "Subject: hi\n\nbody")
	assert.Equal(t, "hi", m.Header.Get("Subject"))
	b, err := io.ReadAll(m.Body())
	require.NoError(t, err)
	assert.Equal(t, "body\r\n", string(b))
}

func TestNormalizeCRLF(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "\r\n"},
		{"a", "a\r\n"},
		{"a\n", "a\r\n"},
		{"a\r\n", "a\r\n"},
		{"a\nb\r\nc\n\nd", "a\r\nb\r\nc\r\n\r\nd\r\n"},
		{"a\rb", "a\rb\r\n"},
		{"\n\n", "\r\n\r\n"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, policytest.NormalizeCRLF(tt.in), "%q", tt.in)
	}
}
