package relay_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/relay"
)

// policyBackend is a minimal go-smtp backend that runs a policy.Chain at
// MAIL and RCPT, as the smtp package does, so the relay rules are tested
// over a real socket.
type policyBackend struct {
	chain *policy.Chain
	users map[string]string // AUTH PLAIN accounts
	n     atomic.Int64
}

type policySession struct {
	b    *policyBackend
	conn *policy.Conn
	tx   *policy.Transaction
}

func (b *policyBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	remote, _ := netip.ParseAddrPort(c.Conn().RemoteAddr().String())
	local, _ := netip.ParseAddrPort(c.Conn().LocalAddr().String())
	id := fmt.Sprintf("c%d", b.n.Add(1))
	return &policySession{b: b, conn: &policy.Conn{ID: id, Remote: remote, Local: local, Helo: c.Hostname(), ESMTP: true, Started: time.Now()}}, nil
}

func smtpErr(r policy.Reply) *smtp.SMTPError {
	var e smtp.EnhancedCode
	fmt.Sscanf(r.Enhanced, "%d.%d.%d", &e[0], &e[1], &e[2])
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: e, Message: r.Text}
}

func (s *policySession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *policySession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if p, ok := s.b.users[username]; !ok || p != password {
			return smtp.ErrAuthFailed
		}
		s.conn.AuthUser, s.conn.AuthMechanism = username, mech
		return nil
	}), nil
}

func (s *policySession) Mail(from string, _ *smtp.MailOptions) error {
	addr, err := policy.ParseAddress(from)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	}
	s.tx = policy.NewTransaction(s.conn, fmt.Sprintf("t%d", s.b.n.Add(1)))
	s.tx.From = addr
	if res := s.b.chain.EvalMail(context.Background(), s.tx); !res.Accepted() {
		s.tx = nil
		return smtpErr(res.Reply)
	}
	return nil
}

func (s *policySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	addr, err := policy.ParseAddress(to)
	if err != nil {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	}
	rcpt := policy.Recipient{Addr: addr}
	res := s.b.chain.EvalRcpt(context.Background(), s.tx, rcpt)
	if !res.Accepted() {
		return smtpErr(res.Reply)
	}
	s.tx.Rcpts = append(s.tx.Rcpts, rcpt)
	return nil
}

func (s *policySession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func (s *policySession) Reset()        { s.tx = nil }
func (s *policySession) Logout() error { return nil }

// startPolicyServer serves chain on 127.0.0.1 and returns its address.
func startPolicyServer(t *testing.T, chain *policy.Chain) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := smtp.NewServer(&policyBackend{chain: chain, users: map[string]string{
		"alice@local.test": "alice-pw",
		"bob@other.test":   "bob-pw",
		"carol":            "carol-pw",
	}})
	srv.Domain = "mx.local.test"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// rawClient is a textproto session from a chosen loopback source address.
type rawClient struct {
	t  *testing.T
	tp *textproto.Conn
}

func dialFrom(t *testing.T, addr, from string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawClient{t: t, tp: textproto.NewConn(c)}
	t.Cleanup(func() { rc.tp.Close() })
	_, _, err = rc.tp.ReadResponse(220)
	require.NoError(t, err)
	return rc
}

// say sends line and returns the reply as "code text" (last line).
func (c *rawClient) say(line string) string {
	c.t.Helper()
	id, err := c.tp.Cmd("%s", line)
	require.NoError(c.t, err)
	c.tp.StartResponse(id)
	defer c.tp.EndResponse(id)
	code, msg, err := c.tp.ReadResponse(0)
	var te *textproto.Error
	if err != nil && !errors.As(err, &te) {
		require.NoError(c.t, err)
	}
	lines := strings.Split(msg, "\n")
	return fmt.Sprintf("%d %s", code, lines[len(lines)-1])
}

const (
	outsideIP  = "127.0.0.1"
	internalIP = "127.0.0.2"
	relayOK    = "250 2.0.0 I'll make sure"
	mailOK     = "250 2.0.0 Roger, accepting mail from"
	denied     = "554 5.7.1 Relay access denied"
	spoofed    = "550 5.7.1 Sender address in a local domain requires authentication"
)

// match compares a reply with the expected one: exactly for refusals, by
// prefix for go-smtp's own positive replies (which name the address).
func match(want, got string) bool {
	return want == got || strings.HasPrefix(want, "250 ") && strings.HasPrefix(got, want)
}

type relayCase struct {
	name     string
	client   string // source address
	user     string // AUTH PLAIN identity ("" none)
	from     string // MAIL FROM argument
	rcpt     string // RCPT TO argument
	wantRcpt string // reply to RCPT with CheckRelay
	// The split form (CheckMailRelay + CheckRcptRelay): reply to MAIL and
	// to RCPT (when MAIL was accepted).
	wantSplitMail, wantSplitRcpt string
}

var relayCases = []relayCase{
	{name: "outside to local user", client: outsideIP, from: "<x@other.test>", rcpt: "<user@local.test>", wantRcpt: relayOK},
	{name: "outside to foreign", client: outsideIP, from: "<x@other.test>", rcpt: "<user@other.test>", wantRcpt: denied},
	{name: "authenticated local user to outside", client: outsideIP, user: "alice@local.test", from: "<alice@local.test>", rcpt: "<user@other.test>", wantRcpt: relayOK},
	{name: "authenticated foreign identity to outside", client: outsideIP, user: "bob@other.test", from: "<bob@other.test>", rcpt: "<user@far.test>", wantRcpt: denied},
	{name: "authenticated foreign identity to local", client: outsideIP, user: "bob@other.test", from: "<bob@other.test>", rcpt: "<user@local.test>", wantRcpt: relayOK},
	{name: "authenticated bare user name to outside", client: outsideIP, user: "carol", from: "<carol@other.test>", rcpt: "<user@far.test>", wantRcpt: denied},
	{name: "internal network to outside", client: internalIP, from: "<x@local.test>", rcpt: "<user@other.test>", wantRcpt: relayOK},
	{name: "percent hack is a literal local part", client: outsideIP, from: "<x@other.test>", rcpt: "<user%other.test@local.test>", wantRcpt: relayOK},
	{name: "percent hack to foreign domain", client: outsideIP, from: "<x@other.test>", rcpt: "<user%local.test@other.test>", wantRcpt: denied},
	{name: "bang path with local domain is literal", client: outsideIP, from: "<x@other.test>", rcpt: "<other.test!user@local.test>", wantRcpt: relayOK},
	{name: "bang path without domain", client: outsideIP, from: "<x@other.test>", rcpt: "<other.test!user>", wantRcpt: "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"},
	{name: "source route to foreign", client: outsideIP, from: "<x@other.test>", rcpt: "<@local.test:user@other.test>", wantRcpt: denied},
	{name: "source route list to foreign", client: outsideIP, from: "<x@other.test>", rcpt: "<@local.test,@mx.local.test:user@other.test>", wantRcpt: denied},
	{name: "quoted local part with at sign", client: outsideIP, from: "<x@other.test>", rcpt: `<"user@other.test"@local.test>`, wantRcpt: relayOK},
	{name: "trailing dot", client: outsideIP, from: "<x@other.test>", rcpt: "<user@local.test.>", wantRcpt: relayOK},
	{name: "upper case domain", client: outsideIP, from: "<x@other.test>", rcpt: "<User@LOCAL.Test>", wantRcpt: relayOK},
	{name: "IP literal", client: outsideIP, from: "<x@other.test>", rcpt: "<user@[127.0.0.1]>", wantRcpt: denied},
	{name: "IPv6 literal", client: outsideIP, from: "<x@other.test>", rcpt: "<user@[IPv6:::1]>", wantRcpt: denied},
	{name: "look-alike subdomain of foreign", client: outsideIP, from: "<x@other.test>", rcpt: "<user@local.test.other.test>", wantRcpt: denied},
	{name: "look-alike prefix", client: outsideIP, from: "<x@other.test>", rcpt: "<user@otherlocal.test>", wantRcpt: denied},
	{name: "look-alike x prefix", client: outsideIP, from: "<x@other.test>", rcpt: "<user@xlocal.test>", wantRcpt: denied},
	{name: "subdomain of local", client: outsideIP, from: "<x@other.test>", rcpt: "<user@sub.local.test>", wantRcpt: denied},
	{name: "spoofed local sender to foreign", client: outsideIP, from: "<alice@local.test>", rcpt: "<user@other.test>", wantRcpt: spoofed, wantSplitMail: spoofed},
	{name: "spoofed local sender to local", client: outsideIP, from: "<alice@LOCAL.test.>", rcpt: "<user@local.test>", wantRcpt: spoofed, wantSplitMail: spoofed},
	{name: "null sender to local", client: outsideIP, from: "<>", rcpt: "<user@local.test>", wantRcpt: relayOK},
	{name: "null sender to foreign", client: outsideIP, from: "<>", rcpt: "<user@other.test>", wantRcpt: denied},
	// go-smtp v0.25.1 refuses a bare "postmaster" before any rule runs (RFC
	// 5321 4.1.1.3 wants it accepted); the rule accepts it (unit test).
	{name: "bare postmaster", client: outsideIP, from: "<x@other.test>", rcpt: "<Postmaster>", wantRcpt: "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"},
	{name: "authenticated local user with foreign sender", client: outsideIP, user: "alice@local.test", from: "<a@other.test>", rcpt: "<user@far.test>", wantRcpt: relayOK},
}

func TestRelayRulesOverSocket(t *testing.T) {
	internal, err := relay.ParsePrefixes(internalIP)
	require.NoError(t, err)
	combined := policy.NewChain()
	combined.Rcpt("relay", relay.CheckRelay(internal, "local.test", "Second.Test."))
	split := policy.NewChain()
	split.Mail("relay-mail", relay.CheckMailRelay(internal, "local.test"))
	split.Rcpt("relay-rcpt", relay.CheckRcptRelay(internal, "local.test"))
	combinedAddr := startPolicyServer(t, combined)
	splitAddr := startPolicyServer(t, split)

	for _, tc := range relayCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, form := range []string{"combined", "split"} {
				addr := combinedAddr
				wantMail, wantRcpt := mailOK, tc.wantRcpt
				if form == "split" {
					addr = splitAddr
					if tc.wantSplitMail != "" {
						wantMail = tc.wantSplitMail
					}
					if tc.wantSplitRcpt != "" {
						wantRcpt = tc.wantSplitRcpt
					}
				}
				c := dialFrom(t, addr, tc.client)
				assert.True(t, strings.HasPrefix(c.say("EHLO client.test"), "250 "), form)
				if tc.user != "" {
					pw := map[string]string{"alice@local.test": "alice-pw", "bob@other.test": "bob-pw", "carol": "carol-pw"}[tc.user]
					resp := base64.StdEncoding.EncodeToString([]byte("\x00" + tc.user + "\x00" + pw))
					require.Equal(t, "235 2.0.0 Authentication succeeded", c.say("AUTH PLAIN "+resp), form)
				}
				got := c.say("MAIL FROM:" + tc.from)
				require.True(t, match(wantMail, got), "%s: MAIL: want %q, got %q", form, wantMail, got)
				if wantMail != mailOK {
					continue
				}
				got = c.say("RCPT TO:" + tc.rcpt)
				assert.True(t, match(wantRcpt, got), "%s: RCPT: want %q, got %q", form, wantRcpt, got)
				assert.Equal(t, "221 2.0.0 Bye", c.say("QUIT"), form)
			}
		})
	}
	t.Run("second local domain", func(t *testing.T) {
		c := dialFrom(t, combinedAddr, outsideIP)
		c.say("EHLO client.test")
		require.True(t, match(mailOK, c.say("MAIL FROM:<x@other.test>")))
		assert.True(t, match(relayOK, c.say("RCPT TO:<y@second.test>")))
		assert.Equal(t, denied, c.say("RCPT TO:<y@second.test.other.test>"))
	})
}

// The positive cases with go-smtp's own client, through to DATA.
func TestRelayPositiveWithGoSMTPClient(t *testing.T) {
	internal := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	chain := policy.NewChain()
	chain.Rcpt("relay", relay.CheckRelay(internal, "local.test"))
	addr := startPolicyServer(t, chain)
	msg := "Subject: hi\r\n\r\nhello\r\n"

	send := func(src, user, pass, from string, to []string) error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		c := smtp.NewClient(conn)
		defer c.Close()
		if err := c.Hello("client.test"); err != nil {
			return err
		}
		if user != "" {
			if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
				return err
			}
		}
		return c.SendMail(from, to, strings.NewReader(msg))
	}
	require.NoError(t, send(outsideIP, "", "", "x@other.test", []string{"user@local.test"}), "outside sender to local user")
	require.NoError(t, send(outsideIP, "alice@local.test", "alice-pw", "alice@local.test", []string{"user@other.test"}), "authenticated local user to outside")
	require.NoError(t, send(internalIP, "", "", "x@local.test", []string{"user@other.test"}), "internal network to outside")

	err := send(outsideIP, "", "", "x@other.test", []string{"user@other.test"})
	var se *smtp.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 554, se.Code)
	assert.Equal(t, smtp.EnhancedCode{5, 7, 1}, se.EnhancedCode)
}
