package auth

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
		opts     SPFOptions
		want     want
	}{
		{"pass", SPFMailFrom, SPFSoft, good, "mail.pass.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"pass ipv6", SPFMailFrom, SPFStrict, "2001:db8::25", "x.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"pass ipv4-mapped", SPFMailFrom, SPFStrict, "::ffff:" + good, "x.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"domain case folded", SPFMailFrom, SPFSoft, good, "x.test", "alice@PASS.Test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"fail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@fail.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"fail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@fail.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"softfail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@soft.test", SPFOptions{}, want{0, "", SPFSoftFail, "mailfrom", "soft.test", "bob@soft.test"}},
		{"softfail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@soft.test", SPFOptions{}, want{550, "5.7.23", SPFSoftFail, "mailfrom", "soft.test", "bob@soft.test"}},
		{"neutral strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@neutral.test", SPFOptions{}, want{0, "", SPFNeutral, "mailfrom", "neutral.test", "bob@neutral.test"}},
		{"none strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@none.test", SPFOptions{}, want{0, "", SPFNone, "mailfrom", "none.test", "bob@none.test"}},
		{"nxdomain strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@nowhere.test", SPFOptions{}, want{0, "", SPFNone, "mailfrom", "nowhere.test", "bob@nowhere.test"}},
		{"permerror soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@perm.test", SPFOptions{}, want{0, "", SPFPermError, "mailfrom", "perm.test", "bob@perm.test"}},
		{"permerror strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@perm.test", SPFOptions{}, want{550, "5.7.24", SPFPermError, "mailfrom", "perm.test", "bob@perm.test"}},
		{"servfail soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@servfail.test", SPFOptions{}, want{0, "", SPFTempError, "mailfrom", "servfail.test", "bob@servfail.test"}},
		{"servfail strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@servfail.test", SPFOptions{}, want{451, "4.7.24", SPFTempError, "mailfrom", "servfail.test", "bob@servfail.test"}},
		{"servfail in include strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@inc.test", SPFOptions{}, want{451, "4.7.24", SPFTempError, "mailfrom", "inc.test", "bob@inc.test"}},
		{"timeout soft", SPFMailFrom, SPFSoft, good, "x.test", "bob@timeout.test", SPFOptions{Timeout: 300 * time.Millisecond}, want{0, "", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"timeout strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@timeout.test", SPFOptions{Timeout: 300 * time.Millisecond}, want{451, "4.7.24", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"lookup timeout strict", SPFMailFrom, SPFStrict, good, "x.test", "bob@timeout.test", SPFOptions{LookupTimeout: 200 * time.Millisecond}, want{451, "4.7.24", SPFTempError, "mailfrom", "timeout.test", "bob@timeout.test"}},
		{"address literal sender", SPFMailFrom, SPFStrict, good, "x.test", "bob@[192.0.2.10]", SPFOptions{}, want{0, "", SPFNone, "mailfrom", "[192.0.2.10]", "bob@[192.0.2.10]"}},

		// Identity helo.
		{"helo pass", SPFHelo, SPFStrict, good, "mail.pass.test", "bob@fail.test", SPFOptions{}, want{0, "", SPFPass, "helo", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"helo fail", SPFHelo, SPFSoft, good, "bad-helo.test", "alice@pass.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "helo", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"helo trailing dot", SPFHelo, SPFSoft, good, "Mail.Pass.Test.", "bob@fail.test", SPFOptions{}, want{0, "", SPFPass, "helo", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"helo literal", SPFHelo, SPFStrict, good, "[192.0.2.10]", "alice@pass.test", SPFOptions{}, want{0, "", SPFNone, "helo", "[192.0.2.10]", "postmaster@[192.0.2.10]"}},
		{"helo single label", SPFHelo, SPFStrict, good, "localhost", "alice@pass.test", SPFOptions{}, want{0, "", SPFNone, "helo", "localhost", "postmaster@localhost"}},
		{"mailfrom ignores helo", SPFMailFrom, SPFSoft, good, "bad-helo.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},

		// Identity both: HELO first.
		{"both helo fail denies", SPFBoth, SPFSoft, good, "bad-helo.test", "alice@pass.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "helo", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"both helo pass, mailfrom fail", SPFBoth, SPFSoft, good, "mail.pass.test", "bob@fail.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},
		{"both helo pass, mailfrom pass", SPFBoth, SPFStrict, good, "mail.pass.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both soft: helo softfail not definitive", SPFBoth, SPFSoft, good, "helo-soft.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both strict: helo softfail denies", SPFBoth, SPFStrict, good, "helo-soft.test", "alice@pass.test", SPFOptions{}, want{550, "5.7.23", SPFSoftFail, "helo", "helo-soft.test", "postmaster@helo-soft.test"}},
		{"both strict: helo temperror not definitive", SPFBoth, SPFStrict, good, "helo-servfail.test", "alice@pass.test", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "pass.test", "alice@pass.test"}},
		{"both: helo literal, mailfrom decides", SPFBoth, SPFStrict, good, "[192.0.2.10]", "bob@fail.test", SPFOptions{}, want{550, "5.7.23", SPFFail, "mailfrom", "fail.test", "bob@fail.test"}},

		// Null sender: postmaster@<helo>.
		{"null sender pass", SPFMailFrom, SPFStrict, good, "mail.pass.test", "<>", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"null sender fail", SPFMailFrom, SPFSoft, good, "bad-helo.test", "<>", SPFOptions{}, want{550, "5.7.23", SPFFail, "mailfrom", "bad-helo.test", "postmaster@bad-helo.test"}},
		{"null sender both", SPFBoth, SPFSoft, good, "mail.pass.test", "<>", SPFOptions{}, want{0, "", SPFPass, "mailfrom", "mail.pass.test", "postmaster@mail.pass.test"}},
		{"null sender literal helo", SPFMailFrom, SPFStrict, good, "[192.0.2.10]", "<>", SPFOptions{}, want{0, "", SPFNone, "mailfrom", "[192.0.2.10]", "postmaster@[192.0.2.10]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts
			opts.Identity, opts.Mode, opts.Resolver = tt.identity, tt.mode, srv.Resolver()
			opts.Receiver, opts.Logger = "mx.test", quietLogger()
			rule := CheckSPF(opts)
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

			// Exactly one Received-SPF, well-formed, with the same result.
			require.Equal(t, []string{"Received-SPF"}, fieldNames(&tx.Header))
			result, kv, err := parseReceivedSPFForTest(tx.Header.Get("Received-SPF"))
			require.NoError(t, err, tx.Header.Get("Received-SPF"))
			assert.Equal(t, string(got.Result), result)
			assert.Equal(t, got.Identity, kv["identity"])
			assert.Equal(t, got.ClientIP.String(), kv["client-ip"])
			assert.Equal(t, got.Sender, kv["envelope-from"])
			assert.Equal(t, "mx.test", kv["receiver"])
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
	rule := CheckSPF(SPFOptions{Identity: SPFMailFrom, Mode: SPFSoft, Resolver: srv.Resolver(), Receiver: "mx.example.org", Logger: quietLogger()})
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
	rule := CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFSoft, Resolver: srv.Resolver(), Receiver: "mx.test", Logger: quietLogger()})
	helo := "evil (x\") \\\r\nX-Injected: yes;"
	tx := spfTx("192.0.2.10", helo, "alice@pass.test", "")
	rule(context.Background(), tx)
	require.Len(t, tx.Header.Fields(), 1)
	raw := string(tx.Header.Fields()[0].Raw)
	assert.NotContains(t, raw, "\r\nX-Injected")
	result, kv, err := parseReceivedSPFForTest(tx.Header.Get("Received-SPF"))
	require.NoError(t, err, tx.Header.Get("Received-SPF"))
	assert.Equal(t, "pass", result)
	assert.Equal(t, "mx.test", kv["receiver"])
	assert.Equal(t, "alice@pass.test", kv["envelope-from"])
	assert.Equal(t, `evil (x") \  X-Injected: yes;`, kv["helo"], "quoted, CR and LF each made a space")
}

func TestCheckSPFAuthenticated(t *testing.T) {
	srv := spfTestServer(t)
	ctx := context.Background()

	// Skipped by default: a roaming user is not held to their domain's SPF.
	rule := CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFStrict, Resolver: srv.Resolver(), Receiver: "mx.test", Logger: quietLogger()})
	tx := spfTx("198.51.100.1", "laptop.hotel.test", "jane@fail.test", "jane@fail.test")
	assert.Equal(t, policy.Next(), rule(ctx, tx))
	_, ok := SPFResultKey.Get(tx)
	assert.False(t, ok)
	assert.Equal(t, 0, tx.Header.Len())
	assert.Equal(t, 0, srv.Queries(), "no DNS for a skipped check")

	// Checked when asked to.
	rule = CheckSPF(SPFOptions{Identity: SPFMailFrom, Mode: SPFStrict, Resolver: srv.Resolver(), CheckAuthenticated: true, Receiver: "mx.test", Logger: quietLogger()})
	v := rule(ctx, tx)
	assert.Equal(t, policy.KindDeny, v.Kind)
	assert.Equal(t, "5.7.23", v.Reply.Enhanced)
}

func TestCheckSPFNoHeaderOption(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFOptions{Identity: SPFMailFrom, Mode: SPFSoft, Resolver: srv.Resolver(), OmitReceivedSPF: true, Logger: quietLogger()})
	tx := spfTx("192.0.2.10", "x.test", "alice@pass.test", "")
	rule(context.Background(), tx)
	assert.Equal(t, 0, tx.Header.Len())
	r, ok := SPFResultKey.Get(tx)
	require.True(t, ok)
	assert.Equal(t, SPFPass, r.Result)
}

func TestCheckSPFContextCancelled(t *testing.T) {
	srv := spfTestServer(t)
	rule := CheckSPF(SPFOptions{Identity: SPFMailFrom, Mode: SPFStrict, Resolver: srv.Resolver(), Logger: quietLogger()})
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
	chain.Mail("spf", CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFSoft, Resolver: srv.Resolver(), Receiver: "mx.test", Logger: quietLogger()}))
	tx := spfTx("192.0.2.10", "mail.pass.test", "bob@fail.test", "")
	res := chain.EvalMail(context.Background(), tx)
	assert.False(t, res.Accepted())
	assert.Equal(t, "spf", res.Rule)
	assert.Equal(t, policy.Reply{Code: 550, Enhanced: "5.7.23", Text: "SPF fail: the domain of bob@fail.test does not designate 192.0.2.10 as permitted sender"}, res.Reply)
}

func TestCheckSPFMisconfiguration(t *testing.T) {
	assert.Panics(t, func() { CheckSPF(SPFOptions{Identity: SPFBoth + 1}) })
	assert.Panics(t, func() { CheckSPF(SPFOptions{Mode: SPFStrict + 1}) })
	rule := CheckSPF(SPFOptions{Identity: SPFBoth, Resolver: &errResolver{}})
	tx := policy.NewTransaction(nil, "tx")
	v := rule(context.Background(), tx)
	assert.Equal(t, policy.Fail(nil).Reply, v.Reply)
	assert.Equal(t, "both", SPFBoth.String())
	assert.Equal(t, "strict", SPFStrict.String())
}

// parseReceivedSPFForTest checks that v is a well-formed Received-SPF value
// as ReceivedSPF writes it (RFC 7208 section 9.1: a result, a comment
// without parentheses inside, then key=value pairs separated by "; " whose
// values are dot-atoms, addresses or quoted-strings) and returns the result
// and the values, unquoted.
func parseReceivedSPFForTest(v string) (string, map[string]string, error) {
	result, rest, ok := strings.Cut(v, " (")
	if !ok || !SPFStatus(result).valid() {
		return "", nil, fmt.Errorf("no result and comment in %q", v)
	}
	comment, rest, ok := strings.Cut(rest, ") ")
	if !ok || strings.ContainsAny(comment, "()\\\r\n") {
		return "", nil, fmt.Errorf("bad comment in %q", v)
	}
	kv := map[string]string{}
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok || key == "" || strings.ContainsAny(key, " ;\"") {
			return "", nil, fmt.Errorf("bad key at %q", rest)
		}
		var val strings.Builder
		i := 0
		if strings.HasPrefix(after, `"`) {
			for i = 1; i < len(after) && after[i] != '"'; i++ {
				c := after[i]
				if c == '\\' {
					i++
					if i == len(after) {
						return "", nil, fmt.Errorf("dangling backslash in %q", after)
					}
					c = after[i]
				}
				if c < 0x20 || c == 0x7f {
					return "", nil, fmt.Errorf("control character in %q", after)
				}
				val.WriteByte(c)
			}
			if i == len(after) {
				return "", nil, fmt.Errorf("unterminated quoted-string %q", after)
			}
			i++
		} else {
			for i < len(after) && after[i] != ';' {
				i++
			}
			val.WriteString(after[:i])
			if !isSPFDotAtom(val.String()) && !isIPText(val.String()) {
				return "", nil, fmt.Errorf("bare value %q is no dot-atom", val.String())
			}
		}
		if _, dup := kv[key]; dup {
			return "", nil, fmt.Errorf("duplicate key %q", key)
		}
		kv[key] = val.String()
		rest = after[i:]
		if rest != "" {
			if !strings.HasPrefix(rest, "; ") {
				return "", nil, fmt.Errorf("no separator at %q", rest)
			}
			rest = rest[2:]
		}
	}
	return result, kv, nil
}

// FuzzReceivedSPF: whatever names a client gives, the Received-SPF field
// we write is one well-formed field whose values read back as written
// (CR, LF and other controls aside).
func FuzzReceivedSPF(f *testing.F) {
	f.Add("alice@example.com", "mail.example.com", "dns failed", uint8(2))
	f.Add(`"odd (x) \"q\""@example.com`, "h (x) \\", `dns "failed" (x)`, uint8(5))
	f.Add("x@y", "evil\r\nX-Injected: yes;", "", uint8(0))
	statuses := []SPFStatus{SPFNone, SPFNeutral, SPFPass, SPFFail, SPFSoftFail, SPFTempError, SPFPermError}
	f.Fuzz(func(t *testing.T, sender, helo, problem string, st uint8) {
		r := SPFResult{Result: statuses[int(st)%len(statuses)], Identity: "mailfrom", Domain: "example.com", Sender: sender,
			ClientIP: netip.MustParseAddr("2001:db8::5"), Helo: helo, Receiver: "mx.example", Problem: problem}
		field := foldField("Received-SPF", r.ReceivedSPF())
		lines := strings.Split(strings.TrimSuffix(string(field), "\r\n"), "\r\n")
		for i, l := range lines {
			if strings.ContainsAny(l, "\r\n") || (i > 0 && !strings.HasPrefix(l, " ")) {
				t.Fatalf("field %q is not one folded field", field)
			}
		}
		var h policy.Header
		h.AddRaw(field)
		result, kv, err := parseReceivedSPFForTest(h.Get("Received-SPF"))
		if err != nil {
			t.Fatalf("%v: %q", err, field)
		}
		if result != string(r.Result) || kv["receiver"] != "mx.example" || kv["identity"] != "mailfrom" || kv["client-ip"] != "2001:db8::5" {
			t.Fatalf("read back %s %v from %q", result, kv, field)
		}
		if !utf8.ValidString(sender) || strings.ContainsFunc(sender, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return
		}
		if kv["envelope-from"] != sender {
			t.Fatalf("envelope-from %q read back as %q", sender, kv["envelope-from"])
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
	rule := CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFStrict, Resolver: r, Receiver: "mx.test", Logger: quietLogger()})
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tx := spfTx("192.0.2.25", "mail.example.com", fmt.Sprintf("user%d@example.com", i%100), "")
		if v := rule(ctx, tx); v.Kind != policy.KindNext {
			b.Fatalf("verdict %v", v)
		}
	}
}
