package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

var users = mapAuth{"alice": "secret", "bob": "hunter2"}

func authServer(t *testing.T, chain *policy.Chain) *harness {
	if chain == nil {
		chain = (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll)
	}
	return start(t, Config{Chain: chain, Authenticator: users, TLSConfig: testTLS(t)},
		Listener{Name: "mta", Role: RoleMTA},
		Listener{Name: "submission", Role: RoleSubmission},
		Listener{Name: "smtps", Role: RoleImplicitTLS})
}

func TestSubmissionAuthOnlyAfterSTARTTLS(t *testing.T) {
	h := authServer(t, nil)
	addr := h.addrs["submission"]

	// Plaintext: STARTTLS offered, AUTH not; MAIL and AUTH refused.
	c := dialRaw(t, addr)
	c.reply()
	ehlo := c.expect("EHLO client.test", 250)
	assert.Contains(t, ehlo, "STARTTLS")
	assert.NotContains(t, ehlo, "AUTH")
	assert.Contains(t, c.expect("MAIL FROM:<alice@client.test>", 530), "530 5.7.0")
	code, _ := c.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")))
	assert.Equal(t, 523, code, "AUTH before STARTTLS is refused")

	// After STARTTLS: AUTH offered; MAIL still needs it.
	gc, err := gosmtp.DialStartTLS(addr, clientTLS())
	require.NoError(t, err)
	defer gc.Close()
	require.NoError(t, gc.Hello("client.test"))
	ok, mechs := gc.Extension("AUTH")
	require.True(t, ok)
	assert.Equal(t, "PLAIN LOGIN", mechs)
	err = gc.Mail("alice@client.test", nil)
	assert.Equal(t, 530, smtpCode(err))
	err = gc.Auth(sasl.NewPlainClient("", "alice", "wrong"))
	assert.Equal(t, 535, smtpCode(err))
	require.NoError(t, gc.Auth(sasl.NewPlainClient("", "alice", "secret")))
	require.NoError(t, gc.Mail("alice@client.test", nil))
	require.NoError(t, gc.Rcpt("x@elsewhere.test", nil))
	w, err := gc.Data()
	require.NoError(t, err)
	io.WriteString(w, simpleBody)
	require.NoError(t, w.Close())
	msgs := h.queue.all()
	require.Len(t, msgs, 1)
	assert.Regexp(t, `with ESMTPSA \(version=TLS1\.3 cipher=TLS_\w+\) id `, unfold(msgs[0].Data))
}

func TestAuthMechanismsAndFailures(t *testing.T) {
	var authRuleSaw []policy.AuthInfo
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		Auth("no-bob", func(_ context.Context, c *policy.Conn, a policy.AuthInfo) policy.Verdict {
			authRuleSaw = append(authRuleSaw, a)
			if a.Identity == "bob" {
				return policy.Deny(535, "5.7.8", "Account disabled")
			}
			return policy.Next()
		})
	h := authServer(t, chain)
	cases := []struct {
		name string
		auth sasl.Client
		code int
	}{
		{"plain ok", sasl.NewPlainClient("", "alice", "secret"), 0},
		{"login ok", sasl.NewLoginClient("alice", "secret"), 0},
		{"plain wrong password", sasl.NewPlainClient("", "alice", "nope"), 535},
		{"login unknown user", sasl.NewLoginClient("carol", "x"), 535},
		{"authzid differs", sasl.NewPlainClient("bob", "alice", "secret"), 535},
		{"temporary failure", sasl.NewPlainClient("", "locked", "x"), 454},
		{"failure of the authenticator", sasl.NewPlainClient("", "database-down", "x"), 454},
		{"auth rule denies", sasl.NewPlainClient("", "bob", "hunter2"), 535},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gc, err := gosmtp.DialTLS(h.addrs["smtps"], clientTLS())
			require.NoError(t, err)
			defer gc.Close()
			require.NoError(t, gc.Hello("client.test"))
			err = gc.Auth(tc.auth)
			if tc.code == 0 {
				require.NoError(t, err)
				require.NoError(t, gc.Mail("alice@client.test", nil))
				return
			}
			assert.Equal(t, tc.code, smtpCode(err), "%v", err)
			assert.Equal(t, 530, smtpCode(gc.Mail("alice@client.test", nil)))
		})
	}
	assert.Contains(t, authRuleSaw, policy.AuthInfo{Mechanism: "LOGIN", Identity: "alice"})
}

func TestAuthMalformed(t *testing.T) {
	h := authServer(t, nil)
	c := dialTLSRaw(t, h.addrs["smtps"])
	c.reply()
	assert.NotContains(t, c.expect("EHLO client.test", 250), "STARTTLS", "implicit TLS offers no STARTTLS")
	assert.Contains(t, c.expect("AUTH PLAIN !!!notbase64", 454), "454 4.7.0")
	assert.Contains(t, c.expect("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("no-nuls")), 501), "501 5.5.2")
	c.expect("AUTH PLAIN", 334)
	c.expect("*", 501) // cancelled
	c.expect("AUTH LOGIN", 334)
	c.expect(base64.StdEncoding.EncodeToString([]byte("alice")), 334)
	c.expect(base64.StdEncoding.EncodeToString([]byte("secret")), 235)
	c.expect("MAIL FROM:<alice@client.test>", 250)
}

func dialTLSRaw(t *testing.T, addr string) *rawConn {
	c := dialRaw(t, addr)
	tc := tls.Client(c.Conn, clientTLS())
	require.NoError(t, tc.Handshake())
	return &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
}

func TestMTAAuthAfterSTARTTLS(t *testing.T) {
	h := authServer(t, nil)
	c := dialRaw(t, h.addrs["mta"])
	c.reply()
	ehlo := c.expect("EHLO client.test", 250)
	assert.NotContains(t, ehlo, "AUTH")
	// MTA role: no AUTH needed.
	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RSET", 250)

	gc, err := gosmtp.DialStartTLS(h.addrs["mta"], clientTLS())
	require.NoError(t, err)
	defer gc.Close()
	require.NoError(t, gc.Hello("client.test"))
	ok, _ := gc.Extension("AUTH")
	assert.True(t, ok, "AUTH offered after STARTTLS on the MTA listener")
	ok, _ = gc.Extension("STARTTLS")
	assert.False(t, ok)
}

// TestSTARTTLSInjection sends a command in the same packet as STARTTLS
// (CVE-2011-0411): it must not run after the handshake.
func TestSTARTTLSInjection(t *testing.T) {
	h := authServer(t, nil)
	for _, injected := range []string{"RSET", "MAIL FROM:<evil@attacker.test>", "NOOP"} {
		t.Run(injected, func(t *testing.T) {
			c := dialRaw(t, h.addrs["mta"])
			c.reply()
			c.expect("EHLO client.test", 250)
			c.send("STARTTLS\r\n" + injected + "\r\n")
			code, text := c.reply()
			require.Equal(t, 220, code, text)
			require.Zero(t, c.r.Buffered())
			tc := tls.Client(c.Conn, clientTLS())
			require.NoError(t, tc.Handshake())
			tr := &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
			// The first reply over TLS must answer our EHLO, not the
			// injected command.
			code, text = tr.cmd("EHLO client.test")
			require.Equal(t, 250, code, text)
			assert.True(t, strings.HasPrefix(text, "250-Hello client.test"), "first TLS reply answers EHLO: %q", text)
			assert.NotContains(t, text, "STARTTLS")
			// No transaction was started by an injected MAIL.
			code, _ = tr.cmd("RCPT TO:<a@mx.test>")
			assert.Equal(t, 502, code, "no MAIL is pending")
			assert.Equal(t, 502, tr.expectCode("STARTTLS"), "STARTTLS twice")
		})
	}
}

func TestTLSMinVersion(t *testing.T) {
	h := authServer(t, nil)
	cfg := clientTLS()
	cfg.MaxVersion = tls.VersionTLS11
	cfg.MinVersion = tls.VersionTLS10
	c := dialRaw(t, h.addrs["smtps"])
	tc := tls.Client(c.Conn, cfg)
	c.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	assert.Error(t, tc.Handshake(), "TLS 1.1 must be refused")

	cfg.MaxVersion = tls.VersionTLS12
	cfg.MinVersion = tls.VersionTLS12
	c2 := dialRaw(t, h.addrs["smtps"])
	tc2 := tls.Client(c2.Conn, cfg)
	require.NoError(t, tc2.Handshake())
	st := tc2.ConnectionState()
	assert.Equal(t, uint16(tls.VersionTLS12), st.Version)
	for _, s := range tls.InsecureCipherSuites() {
		assert.NotEqual(t, s.ID, st.CipherSuite)
	}
}

// trimAuth trims the user name before looking it up, as auth.CredentialFile
// does (it parses the name as an address).
type trimAuth struct{ mapAuth }

func (a trimAuth) Authenticate(ctx context.Context, ip netip.Addr, user, pass string) error {
	return a.mapAuth.Authenticate(ctx, ip, strings.TrimSpace(user), pass)
}

// TestAuthIdentityControlCharacters: the identity a client gives ends up
// in Conn.AuthUser, which rules and the queue take as a clean name (and a
// rule may well write it into a header). An Authenticator that trims or
// normalizes the name must not let "alice\r\nX-Injected: 1" through: such
// a name is refused as malformed, before the Authenticator sees it.
func TestAuthIdentityControlCharacters(t *testing.T) {
	var got []string
	chain := (&policy.Chain{Logger: testLogger(t)}).
		Auth("record", func(_ context.Context, c *policy.Conn, a policy.AuthInfo) policy.Verdict {
			got = append(got, a.Identity)
			return policy.Next()
		}).
		Rcpt("all", acceptAll)
	h := start(t, Config{Chain: chain, Authenticator: trimAuth{users}, TLSConfig: testTLS(t)},
		Listener{Name: "smtps", Role: RoleImplicitTLS})
	for _, tc := range []struct {
		name, line string
	}{
		{"PLAIN user", "AUTH PLAIN " + b64("\x00alice\r\n\x00secret")},
		{"PLAIN user tab", "AUTH PLAIN " + b64("\x00alice\t\x00secret")},
		{"PLAIN authzid", "AUTH PLAIN " + b64("alice\n\x00alice\n\x00secret")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialTLSRaw(t, h.addrs["smtps"])
			c.reply()
			c.expect("EHLO client.test", 250)
			assert.Contains(t, c.expect(tc.line, 501), "5.5.2")
			// Still not authenticated: submission refuses MAIL.
			c.expect("MAIL FROM:<alice@mx.test>", 530)
		})
	}
	t.Run("LOGIN user", func(t *testing.T) {
		c := dialTLSRaw(t, h.addrs["smtps"])
		c.reply()
		c.expect("EHLO client.test", 250)
		c.expect("AUTH LOGIN", 334)
		c.expect(b64(" alice\r\n"), 334)
		assert.Contains(t, c.expect(b64("secret"), 501), "5.5.2")
		c.expect("MAIL FROM:<alice@mx.test>", 530)
	})
	// The clean name still works.
	c := dialTLSRaw(t, h.addrs["smtps"])
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("AUTH PLAIN "+b64("\x00alice\x00secret"), 235)
	assert.Equal(t, []string{"alice"}, got)
}
