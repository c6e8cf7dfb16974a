package auth

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

func spfTestServer(t *testing.T) *dnstest.Server {
	srv := dnstest.New(t,
		`pass.test. TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::/32 -all"`,
		`mail.pass.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`fail.test. TXT "v=spf1 -all"`,
		`soft.test. TXT "v=spf1 ~all"`,
		`helo-soft.test. TXT "v=spf1 ~all"`,
		`neutral.test. TXT "v=spf1 ?all"`,
		`perm.test. TXT "v=spf1 ip4:300.1.1.1 -all"`,
		`bad-helo.test. TXT "v=spf1 -all"`,
		`none.test. A 192.0.2.99`,
		`inc.test. TXT "v=spf1 include:servfail.test -all"`,
	)
	srv.Fail("servfail.test", dns.RcodeServerFailure)
	srv.Fail("helo-servfail.test", dns.RcodeServerFailure)
	srv.Timeout("timeout.test")
	return srv
}

func spfTx(ip, helo, from string, authUser string) *policy.Transaction {
	conn := &policy.Conn{ID: "c1", Remote: netip.AddrPortFrom(netip.MustParseAddr(ip), 40000), Helo: helo, AuthUser: authUser}
	tx := policy.NewTransaction(conn, "tx1")
	tx.From = policy.MustParseAddress(from)
	return tx
}

func TestCheckSPF(t *testing.T) {
	srv := spfTestServer(t)
	const good = "192.0.2.10"
	type want struct {
		code     int // 0: Next
		enhanced string
		result   SPFStatus
		identity string
		domain   string
		sender   string
	}
	tests := []struct {
		name     string
		identity SPFIdentity
		mode     SPFMode
		ip       string
		helo     string
		from     string
		opts     []SPFOption
		want     want
	}{
		{"pass", SPFMailFrom, SPFSoft, good, "mail.pass.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"pass ipv6", SPFMailFrom, SPFStrict, "2001:db8::25", "x.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"pass ipv4-mapped", SPFMailFrom, SPFStrict, "::ffff:" + good, "x.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"domain case folded", SPFMailFrom, SPFSoft, good, "x.test", "alice@PASS.Test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"fail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@fail.test", nil, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"fail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@fail.test", nil, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"softfail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@soft.test", nil, want{0, "", SPFSoftFail, "mailfrom", "soft.test", "bob@soft.test"}},
		{"softfail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@soft.test", nil, want{550, "5.7.23", SPFSoftFail, "mailfrom", "soft.test", "bob@soft.test"}},
		{"neutral strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@neutral.test", nil, want{0, "", SPFNeutral, "mailfrom", "neutral.test", "bob@neutral.test"}},
		{"none strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@none.test", nil, want{0, "", SPFNone, "mailfrom", "none.test", "bob@none.test"}},
		{"nxdomain strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@nowhere.test", nil, want{0, "", SPFNone, "mailfrom", "nowhere.test", "bob@nowhere.test"}},
		{"permerror soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@perm.test", nil, want{0, "", SPFPermError, "mailfrom", "perm.test", "bob@perm.test"}},
		{"permerror strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@perm.test", nil, want{550, "5.7.24", SPFPermError, "mailfrom", "perm.test", "bob@perm.test"}},
		{"servfail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@servfail.test", nil, want{0, "", SPFTempError, "mailfrom", "servfail.test", "bob@servfail.test"}},
		{"servfail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@servfail.test", nil, want{451, "4.7.24", SPFTempError, "mailfrom", "servfail.test", "bob@servfail.test"}},
		{"servfail in include strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@inc.test", nil, want{451, "4.7.24", SPFTempError, "mailfrom", "inc.test", "bob@inc.test"}},
		{"timeout soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@timeout.test", []SPFOption{SPFTimeout(300 * time.Millisecond)}, want{0, "", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"timeout strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@timeout.test", []SPFOption{SPFTimeout(300 * time.Millisecond)}, want{451, "4.7.24", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"lookup timeout strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@timeout.test", []SPFOption{SPFLookupTimeout(200 * time.Millisecond)}, want{451, "4.7.24", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"address literal sender", SPFMailFrom, SPFStrict, good, "x.test", "bob@[192.0.2.10]", nil, want{0, "", SPFNone, "mailfrom", "[192.0.2.10]", "bob@[192.0.2.10]"}},

		// Identity helo.
		{"helo pass", SPFHelo, SPFStrict, good, "mail.pass.test", "bob@fail.test", nil, want{0, "", SPFPass, "helo", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"helo fail", SPFHelo, SPFSoft, good, "bad-helo.test", "alice@pass.test", nil, want{550, "5.7.23", SPFFail, "helo", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"helo trailing dot", SPFHelo, SPFSoft, good, "Mail.Pass.Test.", "bob@fail.test", nil, want{0, "", SPFPass, "helo", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"helo literal", SPFHelo, SPFStrict, good, "[192.0.2.10]", "alice@pass.test", nil, want{0, "", SPFNone, "helo", "[192.0.2.10]", "postmaster@[192.0.2.10]"}},
		{"helo single label", SPFHelo, SPFStrict, good, "localhost", "alice@pass.test", nil, want{0, "", SPFNone, "helo", "localhost", "postmaster@localhost"}},
		{"mailfrom ignores helo", SPFMailFrom, SPFSoft, good, "bad-helo.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},

		// Identity both: HELO first.
		{"both helo fail denies", SPFBoth, SPFSoft, good, "bad-helo.test", "alice@pass.test", nil, want{550, "5.7.23", SPFFail, "helo", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"both helo pass, mailfrom fail", SPFBoth, SPFSoft, good, "mail.pass.test", "bob@fail.test", nil, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"both helo pass, mailfrom pass", SPFBoth, SPFStrict, good, "mail.pass.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both soft: helo softfail not definitive", SPFBoth, SPFSoft, good, "helo-soft.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both strict: helo softfail denies", SPFBoth, SPFStrict, good, "helo-soft.test", "alice@pass.test", nil, want{550, "5.7.23", SPFSoftFail, "helo", "helo-soft.test", "postmaster@helo-soft.test"}},
		{"both strict: helo temperror not definitive", SPFBoth, SPFStrict, good, "helo-servfail.test", "alice@pass.test", nil, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both: helo literal, mailfrom decides", SPFBoth, SPFStrict, good, "[192.0.2.10]", "bob@fail.test", nil, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},

		// Null sender: postmaster@<helo>.
		{"null sender pass", SPFMailFrom, SPFStrict, good, "mail.pass.test", "<>", nil, want{0, "", SPFPass, "mailfrom", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"null sender fail", SPFMailFrom, SPFSoft, good, "bad-helo.test", "<>", nil, want{550, "5.7.23", SPFFail, "mailfrom", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"null sender both", SPFBoth, SPFSoft, good, "mail.pass.test", "<>", nil, want{0, "", SPFPass, "mailfrom", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"null sender literal helo", SPFMailFrom, SPFStrict, good, "[192.0.2.10]", "<>", nil, want{0, "", SPFNone, "mailfrom", "[192.0.2.10]", "postmaster@[192.0.2.10]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := append([]SPFOption{SPFReceiver("mx.test"), SPFLogger(quietLogger())}, tt.opts...)
			rule := CheckSPF(tt.identity, tt.mode, srv.Resolver(), opts...)
			tx := spfTx(tt.ip, tt.helo, tt.from, "")
			v := rule(context.Background(), tx)
			if tt.want.code == 0 {
				assert.Equal(t, policy.KindNext, v.Kind, "verdict %v", v)
			} else {
				require.Equal(t, policy.KindDeny, v.Kind, "verdict %v", v)
				assert.Equal(t, tt.want.code, v.Reply.Code)
				assert.Equal(t, tt.want.enhanced, v.Reply.Enhanced)
				assert.NotContains(t, v.Reply.Text, "\n")
			}
			got, ok := SPFResultKey.Get(tx)
			require.True(t, ok)
			assert.Equal(t, tt.want.result, got.Result, "problem: %s", got.Problem)
			assert.Equal(t, tt.want.identity, got.Identity)
			assert.Equal(t, tt.want.domain, got.Domain)
			assert.Equal(t, tt.want.sender, got.Sender)
			assert.Equal(t, netip.MustParseAddr(tt.ip).Unmap(), got.ClientIP)
			assert.Equal(t, "mx.test", got.Receiver)
			if got.Result == SPFTempError || got.Result == SPFPermError {
				assert.NotEmpty(t, got.Problem)
			}

			// Exactly one Received-SPF, and it reads back as the same result.
			require.Equal(t, []string{"Received-SPF"}, fieldNames(&tx.Header))
			back, ok := SPFResultFromHeader(&tx.Header, "MX.test")
			require.True(t, ok)
			assert.Equal(t, got.Result, back.Result)
			assert.Equal(t, got.Identity, back.Identity)
			assert.Equal(t, got.Domain, back.Domain)
			assert.Equal(t, got.ClientIP, back.ClientIP)
			assert.Equal(t, got.Sender, back.Sender)

			// The DMARC rule sees the same result.
			in, ok := spfFromTransaction(tx)
			require.True(t, ok)
			assert.Equal(t, SPFInput{Result: string(got.Result), Domain: got.Domain, Identity: got.Identity}, in)
		})
	}
}

func fieldNames(h *policy.Header) []string {
	var names []string
	for _, f := range h.Fields() {
		names = append(names, f.Name())
	}
	return names
}

func TestCheckSPFReceivedSPFContent(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFMailFrom, SPFSoft, srv.Resolver(), SPFReceiver("mx.example.org"), SPFLogger(quietLogger()))
	tx := spfTx("192.0.2.10", "mail.pass.test", "alice@pass.test", "")
	require.Equal(t, policy.KindNext, rule(context.Background(), tx).Kind)
	raw := string(tx.Header.Fields()[0].Raw)
	assert.True(t, strings.HasSuffix(raw, "\r\n"))
	for _, line := range strings.Split(strings.TrimSuffix(raw, "\r\n"), "\r\n") {
		assert.LessOrEqual(t, len(line), 78, "line not folded: %q", line)
	}
	assert.Equal(t,
		`pass (mx.example.org: domain of alice@pass.test designates 192.0.2.10 as permitted sender) client-ip=192.0.2.10; envelope-from="alice@pass.test"; helo=mail.pass.test; receiver=mx.example.org; identity=mailfrom`,
		tx.Header.Get("Received-SPF"))

	// temperror carries the problem, quoted.
	tx = spfTx("192.0.2.10", "mail.pass.test", "bob@servfail.test", "")
	rule(context.Background(), tx)
	v := tx.Header.Get("Received-SPF")
	assert.True(t, strings.HasPrefix(v, "temperror (mx.example.org: temporary error checking domain of bob@servfail.test) client-ip=192.0.2.10;"), v)
	assert.Contains(t, v, `problem="`)
}

func TestCheckSPFHostileHelo(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFBoth, SPFSoft, srv.Resolver(), SPFReceiver("mx.test"), SPFLogger(quietLogger()))
	helo := "evil (x\") \\\r\nX-Injected: yes;"
	tx := spfTx("192.0.2.10", helo, "alice@pass.test", "")
	rule(context.Background(), tx)
	require.Len(t, tx.Header.Fields(), 1)
	raw := string(tx.Header.Fields()[0].Raw)
	assert.NotContains(t, raw, "\r\nX-Injected")
	got, err := ParseReceivedSPF(tx.Header.Get("Received-SPF"))
	require.NoError(t, err)
	assert.Equal(t, SPFPass, got.Result)
	assert.Equal(t, "mx.test", got.Receiver)
	assert.Equal(t, "alice@pass.test", got.Sender)
}

func TestCheckSPFAuthenticated(t *testing.T) {
	srv := spfTestServer(t)
	ctx := context.Background()

	// Skipped by default: a roaming user is not held to their domain's SPF.
	rule := CheckSPF(SPFBoth, SPFStrict, srv.Resolver(), SPFReceiver("mx.test"), SPFLogger(quietLogger()))
	tx := spfTx("198.51.100.1", "laptop.hotel.test", "jane@fail.test", "jane@fail.test")
	assert.Equal(t, policy.Next(), rule(ctx, tx))
	_, ok := SPFResultKey.Get(tx)
	assert.False(t, ok)
	assert.Equal(t, 0, tx.Header.Len())
	assert.Equal(t, 0, srv.Queries(), "no DNS for a skipped check")

	// Checked when asked to.
	rule = CheckSPF(SPFMailFrom, SPFStrict, srv.Resolver(), SPFSkipAuthenticated(false), SPFReceiver("mx.test"), SPFLogger(quietLogger()))
	v := rule(ctx, tx)
	assert.Equal(t, policy.KindDeny, v.Kind)
	assert.Equal(t, "5.7.23", v.Reply.Enhanced)
}

func TestCheckSPFNoHeaderOption(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFMailFrom, SPFSoft, srv.Resolver(), SPFHeader(false), SPFLogger(quietLogger()))
	tx := spfTx("192.0.2.10", "x.test", "alice@pass.test", "")
	rule(context.Background(), tx)
	assert.Equal(t, 0, tx.Header.Len())
	r, ok := SPFResultKey.Get(tx)
	require.True(t, ok)
	assert.Equal(t, SPFPass, r.Result)
}

func TestCheckSPFContextCancelled(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFMailFrom, SPFStrict, srv.Resolver(), SPFLogger(quietLogger()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tx := spfTx("192.0.2.10", "x.test", "alice@pass.test", "")
	v := rule(ctx, tx)
	// Our own context ended: never a 5xx, never a pass.
	require.Equal(t, policy.KindDeny, v.Kind)
	assert.Equal(t, 451, v.Reply.Code)
}

func TestCheckSPFInChain(t *testing.T) {
	srv := spfTestServer(t)
	chain := &policy.Chain{Logger: quietLogger()}
	chain.Mail("spf", CheckSPF(SPFBoth, SPFSoft, srv.Resolver(), SPFReceiver("mx.test"), SPFLogger(quietLogger())))
	tx := spfTx("192.0.2.10", "mail.pass.test", "bob@fail.test", "")
	res := chain.EvalMail(context.Background(), tx)
	assert.False(t, res.Accepted())
	assert.Equal(t, "spf", res.Rule)
	assert.Equal(t, policy.Reply{Code: 550, Enhanced: "5.7.23", Text: "SPF fail: the domain of bob@fail.test does not designate 192.0.2.10 as permitted sender"}, res.Reply)
}

func TestCheckSPFMisconfiguration(t *testing.T) {
	assert.Panics(t, func() { CheckSPF(0, SPFSoft, nil) })
	assert.Panics(t, func() { CheckSPF(SPFBoth, 0, nil) })
	rule := CheckSPF(SPFBoth, SPFSoft, &errResolver{})
	tx := policy.NewTransaction(nil, "tx")
	v := rule(context.Background(), tx)
	assert.Equal(t, policy.Fail(nil).Reply, v.Reply)
	assert.Equal(t, "both", SPFBoth.String())
	assert.Equal(t, "strict", SPFStrict.String())
}

func TestParseReceivedSPF(t *testing.T) {
	tests := []struct {
		in   string
		want SPFResult
		err  bool
	}{
		// RFC 7208 section 9.1 examples.
		{`pass (mybox.example.org: domain of myname@example.com designates 192.0.2.1 as permitted sender) receiver=mybox.example.org; client-ip=192.0.2.1; envelope-from="myname@example.com"; helo=foo.example.com;`,
			SPFResult{Result: SPFPass, Receiver: "mybox.example.org", ClientIP: netip.MustParseAddr("192.0.2.1"), Sender: "myname@example.com", Helo: "foo.example.com", Identity: "mailfrom", Domain: "example.com"}, false},
		{`fail (mybox.example.org: domain of myname@example.com does not designate 192.0.2.1 as permitted sender) identity=mailfrom; client-ip=192.0.2.1; envelope-from="myname@example.com";`,
			SPFResult{Result: SPFFail, ClientIP: netip.MustParseAddr("192.0.2.1"), Sender: "myname@example.com", Identity: "mailfrom", Domain: "example.com"}, false},
		{`PASS helo=Mail.Example.NET; identity=HELO; client-ip=2001:db8::1`,
			SPFResult{Result: SPFPass, Helo: "Mail.Example.NET", Identity: "helo", Domain: "mail.example.net", ClientIP: netip.MustParseAddr("2001:db8::1")}, false},
		{"softfail (a (nested) \\) comment)\r\n\tclient-ip = 192.0.2.7 ; envelope-from = \"a\\\"b@x.test\" ; problem=\"lookup\r\n failed\"",
			SPFResult{Result: SPFSoftFail, ClientIP: netip.MustParseAddr("192.0.2.7"), Sender: `a"b@x.test`, Identity: "mailfrom", Domain: "x.test", Problem: "lookup failed"}, false},
		{`none`, SPFResult{Result: SPFNone, Identity: "mailfrom"}, false},
		{`neutral client-ip=not-an-ip; x-unknown=1`, SPFResult{Result: SPFNeutral, Identity: "mailfrom"}, false},
		{`temperror envelope-from=postmaster@Helo.Test; identity=mailfrom`, SPFResult{Result: SPFTempError, Sender: "postmaster@Helo.Test", Identity: "mailfrom", Domain: "helo.test"}, false},
		{`permerror;`, SPFResult{Result: SPFPermError, Identity: "mailfrom"}, false},
		{``, SPFResult{}, true},
		{`maybe (x)`, SPFResult{}, true},
		{`pass (unterminated`, SPFResult{}, true},
		{`pass envelope-from="unterminated`, SPFResult{}, true},
		{`pass helo`, SPFResult{}, true},
		{`pass =x`, SPFResult{}, true},
		{`pass helo="x\`, SPFResult{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseReceivedSPF(tt.in)
			if tt.err {
				require.ErrorIs(t, err, ErrReceivedSPFSyntax)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestReceivedSPFRoundTrip(t *testing.T) {
	for _, st := range []SPFStatus{SPFNone, SPFNeutral, SPFPass, SPFFail, SPFSoftFail, SPFTempError, SPFPermError} {
		for _, sender := range []string{"alice@example.com", `"odd (x) \"q\""@example.com`, "postmaster@helo.example"} {
			r := SPFResult{Result: st, Identity: "mailfrom", Domain: "example.com", Sender: sender,
				ClientIP: netip.MustParseAddr("2001:db8::5"), Helo: "h (x) \\", Receiver: "mx.example", Problem: `dns "failed" (x)`}
			if sender == "postmaster@helo.example" {
				r.Domain = "helo.example"
			}
			var h policy.Header
			h.Add("Received-SPF", r.ReceivedSPF())
			h.Add("Received", "from x by y")
			got, ok := SPFResultFromHeader(&h, "mx.example")
			require.True(t, ok, h.Get("Received-SPF"))
			assert.Equal(t, r, got)
		}
	}
}

func TestSPFResultFromHeader(t *testing.T) {
	var h policy.Header
	_, ok := SPFResultFromHeader(&h, "mx.test")
	assert.False(t, ok)
	// A forged field from the sender, further down, is ignored when ours
	// is on top; with another receiver on top nothing is trusted.
	h.Add("Received-SPF", "pass (forged) receiver=mx.test; envelope-from=x@forged.test")
	h.Add("Received-SPF", "fail receiver=mx.test; envelope-from=x@real.test")
	r, ok := SPFResultFromHeader(&h, "mx.test")
	require.True(t, ok)
	assert.Equal(t, SPFFail, r.Result)
	assert.Equal(t, "real.test", r.Domain)
	h.Add("Received-SPF", "pass receiver=other.test; envelope-from=x@real.test")
	_, ok = SPFResultFromHeader(&h, "mx.test")
	assert.False(t, ok)
}

func FuzzParseReceivedSPF(f *testing.F) {
	for _, s := range []string{
		`pass (mybox.example.org: domain of myname@example.com designates 192.0.2.1 as permitted sender) receiver=mybox.example.org; client-ip=192.0.2.1; envelope-from="myname@example.com"; helo=foo.example.com;`,
		`fail identity=helo; helo="a\"b"`,
		"softfail (a (b) c) x = y ; ;",
		`temperror problem="\`,
		"none (",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := ParseReceivedSPF(in)
		if err != nil {
			return
		}
		if !r.Result.valid() {
			t.Fatalf("invalid result %q accepted", r.Result)
		}
		// What we write, we read back the same.
		r.Receiver = strings.Map(func(c rune) rune {
			if c < 0x20 || c == 0x7f {
				return -1
			}
			return c
		}, r.Receiver)
		out := r.ReceivedSPF()
		if len(out) > maxReceivedSPF {
			// The receiver is written twice (comment and receiver=) and
			// invalid UTF-8 comes out as U+FFFD: a parsed field near the
			// limit can give more than the parser's DoS bound, which our
			// own fields (host names, addresses) never come near.
			return
		}
		r2, err := ParseReceivedSPF(out)
		if err != nil {
			t.Fatalf("cannot parse our own output %q: %v", out, err)
		}
		if r2.Result != r.Result || r2.ClientIP != r.ClientIP {
			t.Fatalf("round trip changed %+v to %+v", r, r2)
		}
	})
}

// memResolver is an in-memory policy.Resolver that answers like
// *net.Resolver: NXDOMAIN as *net.DNSError{IsNotFound: true}.
type memResolver struct {
	txt map[string][]string
	ip  map[string][]net.IPAddr
}

func (m *memResolver) notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (m *memResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if v, ok := m.txt[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return v, nil
	}
	return nil, m.notFound(name)
}
func (m *memResolver) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	return nil, m.notFound(name)
}
func (m *memResolver) LookupIPAddr(_ context.Context, name string) ([]net.IPAddr, error) {
	if v, ok := m.ip[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return v, nil
	}
	return nil, m.notFound(name)
}
func (m *memResolver) LookupAddr(_ context.Context, addr string) ([]string, error) {
	return nil, m.notFound(addr)
}

func BenchmarkCheckSPF(b *testing.B) {
	r := &memResolver{
		txt: map[string][]string{
			"example.com":      {"v=spf1 include:_spf.example.com a:mail.example.com -all"},
			"_spf.example.com": {"v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 ~all"},
		},
		ip: map[string][]net.IPAddr{"mail.example.com": {{IP: net.ParseIP("192.0.2.25")}}},
	}
	rule := CheckSPF(SPFBoth, SPFStrict, r, SPFReceiver("mx.test"), SPFLogger(quietLogger()))
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tx := spfTx("192.0.2.25", "mail.example.com", fmt.Sprintf("user%d@example.com", i%100), "")
		if v := rule(ctx, tx); v.Kind != policy.KindNext {
			b.Fatalf("verdict %v", v)
		}
	}
}
