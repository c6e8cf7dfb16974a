package auth_test

import (
	"context"
	"log/slog"
	"net"
	"net/mail"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// grants is a SenderOwners from a map: address -> logins.
type grants map[string][]string

func (g grants) Owns(login string, addr policy.Address) bool {
	for _, l := range g[addr.String()] {
		if l == login {
			return true
		}
	}
	return false
}

func senderChain(opts auth.SenderLoginOptions) *policy.Chain {
	chain := &policy.Chain{Logger: slog.New(slog.DiscardHandler)}
	chain.Mail("sender-login", auth.CheckSenderLogin(opts))
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	chain.PreQ("from-login", auth.CheckFromLogin(opts))
	return chain
}

func TestCheckSenderLogin(t *testing.T) {
	opts := auth.SenderLoginOptions{Owners: grants{"family@doe.test": {"john@doe.test"}}}
	cases := []struct {
		name, login, from string
		code              int
	}{
		{"own login", "john@doe.test", "john@doe.test", 0},
		{"own login, other case", "john@doe.test", "John@DOE.TEST", 0},
		{"own login, subaddress", "john@doe.test", "john+lists@doe.test", 0},
		{"granted alias", "john@doe.test", "family@doe.test", 0},
		{"someone else's address", "john@doe.test", "jane@doe.test", 553},
		{"a foreign address", "john@doe.test", "ceo@bigbank.example", 553},
		{"alias granted to another", "jane@doe.test", "family@doe.test", 553},
		{"null sender stays allowed", "john@doe.test", "", 0},
		{"not authenticated: not concerned", "", "jane@doe.test", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := policytest.Run(context.Background(), senderChain(opts), policytest.Session{
				AuthUser: tc.login, From: tc.from, Rcpts: []string{"x@remote.test"},
				Message: "From: <someone@remote.test>\r\nSubject: x\r\n\r\nx\r\n"})
			require.NoError(t, err)
			if tc.code == 0 {
				assert.True(t, o.Mail.Accepted(), o.Mail.Reply.String())
				return
			}
			assert.Equal(t, tc.code, o.Mail.Reply.Code)
			assert.Equal(t, "5.7.1", o.Mail.Reply.Enhanced)
			assert.Contains(t, o.Mail.Reply.Text, "Sender address rejected: not owned by user "+tc.login)
		})
	}
	// Without Owners only the login is owned.
	o, err := policytest.Run(context.Background(), senderChain(auth.SenderLoginOptions{}), policytest.Session{
		AuthUser: "john@doe.test", From: "family@doe.test", Rcpts: []string{"x@remote.test"}})
	require.NoError(t, err)
	assert.Equal(t, 553, o.Mail.Reply.Code)
}

func TestCheckFromLogin(t *testing.T) {
	opts := auth.SenderLoginOptions{Owners: grants{"family@doe.test": {"john@doe.test"}}}
	cases := []struct {
		name, login, from string
		code              int
	}{
		{"own address", "john@doe.test", "John Doe <john@doe.test>", 0},
		{"granted", "john@doe.test", "\"The Does\" <family@doe.test>", 0},
		{"encoded name", "john@doe.test", "=?utf-8?q?J=C3=B6hn?= <john@doe.test>", 0},
		{"someone else", "john@doe.test", "Jane <jane@doe.test>", 553},
		{"two authors, one foreign", "john@doe.test", "john@doe.test, ceo@bigbank.example", 553},
		{"unparsable", "john@doe.test", "not an address", 553},
		{"not authenticated", "", "ceo@bigbank.example", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := policytest.Run(context.Background(), senderChain(opts), policytest.Session{
				AuthUser: tc.login, From: "", Rcpts: []string{"x@remote.test"},
				Message: "From: " + tc.from + "\r\nSubject: x\r\n\r\nx\r\n"})
			require.NoError(t, err)
			if tc.code == 0 {
				assert.True(t, o.PreQ.Accepted(), o.PreQ.Reply.String())
				return
			}
			assert.Equal(t, tc.code, o.PreQ.Reply.Code)
			assert.Equal(t, "5.7.1", o.PreQ.Reply.Enhanced)
		})
	}
	o, err := policytest.Run(context.Background(), senderChain(opts), policytest.Session{
		AuthUser: "john@doe.test", From: "john@doe.test", Rcpts: []string{"x@remote.test"}, Message: "Subject: no From\r\n\r\nx\r\n"})
	require.NoError(t, err)
	assert.True(t, o.PreQ.Accepted(), "a message without From is left to other rules")
}

// password is an smtp.Authenticator with one password for everyone.
type password string

func (p password) Authenticate(_ context.Context, _ netip.Addr, _, pw string) error {
	if pw != string(p) {
		return auth.ErrInvalidCredentials
	}
	return nil
}

// TestSenderLoginOverSMTP runs the rules in a real server on loopback:
// AUTH as john, MAIL FROM jane is refused with 553 5.7.1; MAIL FROM john
// with a header From of jane is refused at the end of DATA.
func TestSenderLoginOverSMTP(t *testing.T) {
	chain := senderChain(auth.SenderLoginOptions{})
	delivered := make(chan *policy.Delivery, 4)
	store, err := queue.Open(t.TempDir(), queue.SpoolConfig{})
	require.NoError(t, err)
	srv := &mtakit.Server{
		Hostname: "mx.doe.test", Chain: chain, Store: store, Logger: slog.New(slog.DiscardHandler),
		SMTP: smtp.Config{
			Listeners:     []smtp.Listener{{Name: "submission", Role: smtp.RoleSubmission, AllowInsecureAuth: true}},
			Authenticator: password("secret"),
		},
		Delivery: queue.Config{
			Transports: map[string]queue.Transport{"test": queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
				delivered <- d
				return make([]policy.Reply, len(d.Rcpts))
			})},
			DefaultRoute: policy.Route{Transport: "test"},
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, []net.Listener{ln}) }()
	defer func() { cancel(); <-done }()

	dial := func() *gosmtp.Client {
		c, err := gosmtp.Dial(ln.Addr().String())
		require.NoError(t, err)
		require.NoError(t, c.Hello("laptop.doe.test"))
		require.NoError(t, c.Auth(sasl.NewPlainClient("", "john@doe.test", "secret")))
		return c
	}
	c := dial()
	err = c.Mail("jane@doe.test", nil)
	var se *gosmtp.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 553, se.Code)
	assert.Equal(t, gosmtp.EnhancedCode{5, 7, 1}, se.EnhancedCode)
	assert.Contains(t, se.Message, "not owned by user john@doe.test")
	c.Close()

	c = dial()
	require.NoError(t, c.Mail("john@doe.test", nil))
	require.NoError(t, c.Rcpt("friend@remote.test", nil))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = w.Write([]byte("From: Jane <jane@doe.test>\r\nSubject: forged\r\n\r\nx\r\n"))
	require.NoError(t, err)
	err = w.Close()
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 553, se.Code)
	assert.True(t, strings.Contains(se.Message, "Header From address rejected"), se.Message)
	c.Close()

	c = dial()
	require.NoError(t, c.SendMail("john@doe.test", []string{"friend@remote.test"}, strings.NewReader("From: John <john@doe.test>\r\nSubject: fine\r\n\r\nx\r\n")))
	c.Close()
	select {
	case d := <-delivered:
		assert.Equal(t, "john@doe.test", d.Tx.From.String())
	case <-time.After(10 * time.Second):
		t.Fatal("the owned sender's message was not delivered")
	}
}

// FuzzCheckFromLogin: whatever the From field holds, the rule never
// panics, and it accepts only fields whose every address is john's.
func FuzzCheckFromLogin(f *testing.F) {
	for _, s := range []string{"john@doe.test", "John <john@doe.test>", "a@b, c@d", "=?utf-8?q?x?= <john+x@doe.test>", "undisclosed:;", "\"x\" <>", ""} {
		f.Add(s)
	}
	rule := auth.CheckFromLogin(auth.SenderLoginOptions{})
	f.Fuzz(func(t *testing.T, from string) {
		if strings.ContainsAny(from, "\r\n") {
			return
		}
		tx := policytest.Transaction(policytest.Session{AuthUser: "john@doe.test"})
		m := policytest.Message(t, "From: "+from+"\r\nSubject: x\r\n\r\nx\r\n")
		v := rule(context.Background(), tx, m)
		if v.Kind != policy.KindNext && v.Kind != policy.KindDeny {
			t.Fatalf("verdict %v", v)
		}
		if v.Kind == policy.KindNext {
			for _, val := range m.Header.Values("From") {
				list, err := mail.ParseAddressList(val)
				if err != nil {
					t.Fatalf("accepted an unparsable From %q", val)
				}
				for _, a := range list {
					pa, err := policy.ParseAddress(a.Address)
					local, _, _ := strings.Cut(pa.Local, "+")
					if err != nil || pa.Domain != "doe.test" || !strings.EqualFold(local, "john") {
						t.Fatalf("accepted From %q for john", a.Address)
					}
				}
			}
		}
	})
}
