package policytest_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// fakeZone and realZone hold the same records: the fake resolver is checked
// against the real *net.Resolver answering from a DNS server on loopback.
var fakeZone = policytest.Resolver{
	TXT: map[string][]string{
		"Example.COM.":          {"v=spf1 ip4:192.0.2.25 -all", "other"},
		"_dmarc.example.com":    {"v=DMARC1; p=reject"},
		"empty-txt.example.com": {},
	},
	MX: map[string][]*net.MX{
		"example.com":  {{Host: "mx2.example.com", Pref: 20}, {Host: "MX1.example.com.", Pref: 10}},
		"null.example": {{Host: ".", Pref: 0}},
	},
	IP: map[string][]string{
		"mx1.example.com":          {"192.0.2.25"},
		"mx6.example.com":          {"2001:db8::25"},
		"25.2.0.192.dnsbl.example": {"127.0.0.2"},
	},
	PTR: map[string][]string{
		"192.0.2.25":   {"MX1.example.com"},
		"2001:db8::25": {"mx6.example.com."},
	},
	ServFail: []string{"broken.example", "192.0.2.66"},
	Timeout:  []string{"slow.example."},
}

var realZone = []string{
	`example.com. TXT "v=spf1 ip4:192.0.2.25 -all"`,
	`example.com. TXT "other"`,
	`_dmarc.example.com. TXT "v=DMARC1; p=reject"`,
	`example.com. MX 20 mx2.example.com.`,
	`example.com. MX 10 MX1.example.com.`,
	`null.example. MX 0 .`,
	`mx1.example.com. A 192.0.2.25`,
	`mx6.example.com. AAAA 2001:db8::25`,
	`25.2.0.192.dnsbl.example. A 127.0.0.2`,
	`25.2.0.192.in-addr.arpa. PTR MX1.example.com.`,
	`5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR mx6.example.com.`,
}

// dnsErr is what a test compares of a *net.DNSError: all but Server (the
// fake has none) and UnwrapErr (checked with errors.Is).
type dnsErr struct {
	Err, Name                          string
	IsNotFound, IsTemporary, IsTimeout bool
}

func errOf(t *testing.T, err error) *dnsErr {
	t.Helper()
	if err == nil {
		return nil
	}
	de, ok := err.(*net.DNSError) // as blitiri spf asserts it: not wrapped
	require.True(t, ok, "%T is not a *net.DNSError", err)
	return &dnsErr{Err: de.Err, Name: de.Name, IsNotFound: de.IsNotFound, IsTemporary: de.IsTemporary, IsTimeout: de.IsTimeout}
}

func notFound(name string) *dnsErr {
	return &dnsErr{Err: "no such host", Name: name, IsNotFound: true}
}

// lookup runs one lookup and returns its answer as strings.
func lookup(ctx context.Context, r policy.Resolver, kind, arg string) ([]string, error) {
	var out []string
	switch kind {
	case "txt":
		return r.LookupTXT(ctx, arg)
	case "mx":
		mxs, err := r.LookupMX(ctx, arg)
		for _, mx := range mxs {
			out = append(out, fmt.Sprintf("%s %d", mx.Host, mx.Pref))
		}
		return out, err
	case "ip":
		addrs, err := r.LookupIPAddr(ctx, arg)
		for _, a := range addrs {
			out = append(out, fmt.Sprintf("%s/%d", a.IP, len(a.IP)))
		}
		return out, err
	case "ptr":
		return r.LookupAddr(ctx, arg)
	}
	panic(kind)
}

var resolverCases = []struct {
	name      string
	kind, arg string
	want      []string
	err       *dnsErr
}{
	{"txt", "txt", "example.com", []string{"v=spf1 ip4:192.0.2.25 -all", "other"}, nil},
	{"txt case and dot", "txt", "EXAMPLE.com.", []string{"v=spf1 ip4:192.0.2.25 -all", "other"}, nil},
	{"txt dmarc", "txt", "_dmarc.example.com", []string{"v=DMARC1; p=reject"}, nil},
	{"txt nxdomain", "txt", "nx.example.com", nil, notFound("nx.example.com")},
	{"txt nxdomain dot", "txt", "nx.example.com.", nil, notFound("nx.example.com.")},
	{"txt nodata", "txt", "mx1.example.com", nil, notFound("mx1.example.com")},
	{"txt empty list", "txt", "empty-txt.example.com", nil, notFound("empty-txt.example.com")},
	{"txt empty name", "txt", "", nil, notFound("")},
	{"mx sorted", "mx", "example.com", []string{"MX1.example.com. 10", "mx2.example.com. 20"}, nil},
	{"null mx", "mx", "null.example", []string{". 0"}, nil},
	{"mx nxdomain", "mx", "nx.example.com", nil, notFound("nx.example.com")},
	{"ip v4", "ip", "mx1.example.com", []string{"192.0.2.25/4"}, nil},
	{"ip v6", "ip", "MX6.example.com", []string{"2001:db8::25/16"}, nil},
	{"dnsbl listed", "ip", "25.2.0.192.dnsbl.example", []string{"127.0.0.2/4"}, nil},
	{"dnsbl not listed", "ip", "26.2.0.192.dnsbl.example", nil, notFound("26.2.0.192.dnsbl.example")},
	{"ip literal", "ip", "192.0.2.9", []string{"192.0.2.9/16"}, nil},
	{"ip empty", "ip", "", nil, notFound("")},
	{"ptr v4", "ptr", "192.0.2.25", []string{"MX1.example.com."}, nil},
	{"ptr v6", "ptr", "2001:db8::25", []string{"mx6.example.com."}, nil},
	{"ptr missing", "ptr", "192.0.2.2", nil, notFound("2.2.0.192.in-addr.arpa.")},
	{"ptr bad address", "ptr", "mx1.example.com", nil, &dnsErr{Err: "unrecognized address", Name: "mx1.example.com"}},
	{"servfail txt", "txt", "broken.example", nil, &dnsErr{Err: "server misbehaving", Name: "broken.example", IsTemporary: true}},
	{"servfail mx", "mx", "BROKEN.example.", nil, &dnsErr{Err: "server misbehaving", Name: "BROKEN.example.", IsTemporary: true}},
	{"servfail ip", "ip", "broken.example", nil, &dnsErr{Err: "server misbehaving", Name: "broken.example", IsTemporary: true}},
}

func TestResolver(t *testing.T) {
	ctx := context.Background()
	for _, tc := range resolverCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookup(ctx, &fakeZone, tc.kind, tc.arg)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.err, errOf(t, err))
		})
	}
}

// TestResolverLikeNet runs the same cases against net.Resolver asking a
// DNS server on loopback that holds the same records: the fake must answer
// as the real one does.
func TestResolverLikeNet(t *testing.T) {
	srv := dnstest.New(t, realZone...)
	srv.Fail("broken.example", dns.RcodeServerFailure)
	real := srv.Resolver()
	ctx := context.Background()
	for _, tc := range resolverCases {
		if tc.name == "txt empty list" {
			continue // a zone cannot hold an empty record set
		}
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookup(ctx, real, tc.kind, tc.arg)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.err, errOf(t, err))
		})
	}
}

func TestResolverServFailAddr(t *testing.T) {
	_, err := fakeZone.LookupAddr(context.Background(), "::ffff:192.0.2.66")
	assert.Equal(t, &dnsErr{Err: "server misbehaving", Name: "66.2.0.192.in-addr.arpa.", IsTemporary: true}, errOf(t, err))
}

func TestResolverTimeout(t *testing.T) {
	// Listed in Timeout: every lookup fails at once as a timeout.
	for _, kind := range []string{"txt", "mx", "ip", "ptr"} {
		arg, name := "slow.example", "slow.example"
		if kind == "ptr" {
			arg, name = "192.0.2.1", "1.2.0.192.in-addr.arpa."
		}
		r := fakeZone
		r.Timeout = []string{"SLOW.example", "192.0.2.1"}
		_, err := lookup(context.Background(), &r, kind, arg)
		assert.Equal(t, &dnsErr{Err: "i/o timeout", Name: name, IsTemporary: true, IsTimeout: true}, errOf(t, err), kind)
		assert.ErrorIs(t, err, context.DeadlineExceeded, kind)
	}
}

// TestResolverContext checks that an ended context fails a lookup with the
// flags net.Resolver sets, comparing with the real one.
func TestResolverContext(t *testing.T) {
	srv := dnstest.New(t, realZone...)
	real := srv.Resolver()

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()

	for _, kind := range []string{"txt", "mx", "ip", "ptr"} {
		arg := "example.com"
		switch kind {
		case "ip":
			arg = "mx1.example.com"
		case "ptr":
			arg = "192.0.2.25"
		}
		for _, c := range []struct {
			name string
			ctx  context.Context
			is   error
		}{{"canceled", canceled, context.Canceled}, {"expired", expired, context.DeadlineExceeded}} {
			t.Run(kind+" "+c.name, func(t *testing.T) {
				_, fakeErr := lookup(c.ctx, &fakeZone, kind, arg)
				_, realErr := lookup(c.ctx, real, kind, arg)
				require.Error(t, realErr)
				f, r := errOf(t, fakeErr), errOf(t, realErr)
				// net's message names the dial that failed; the flags,
				// the name and errors.Is are what callers read.
				assert.Equal(t, r.Name, f.Name)
				assert.Equal(t, [3]bool{r.IsNotFound, r.IsTemporary, r.IsTimeout}, [3]bool{f.IsNotFound, f.IsTemporary, f.IsTimeout})
				assert.ErrorIs(t, realErr, c.is)
				assert.ErrorIs(t, fakeErr, c.is)
			})
		}
	}

	// An IP address needs no lookup: it is returned whatever the context.
	addrs, err := fakeZone.LookupIPAddr(canceled, "192.0.2.9")
	require.NoError(t, err)
	assert.Equal(t, "192.0.2.9", addrs[0].String())
}

func TestResolverZeroValue(t *testing.T) {
	var r policytest.Resolver
	ctx := context.Background()
	for _, kind := range []string{"txt", "mx", "ip", "ptr"} {
		arg := "example.com"
		want := notFound(arg)
		if kind == "ptr" {
			arg, want = "2001:db8::1", notFound("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.")
		}
		got, err := lookup(ctx, &r, kind, arg)
		assert.Nil(t, got, kind)
		assert.Equal(t, want, errOf(t, err), kind)
	}
}

func TestResolverAnswersAreCopies(t *testing.T) {
	r := &policytest.Resolver{
		TXT: map[string][]string{"example.com": {"a"}},
		MX:  map[string][]*net.MX{"example.com": {{Host: "mx.example.com", Pref: 10}}},
		PTR: map[string][]string{"192.0.2.1": {"mx.example.com"}},
	}
	ctx := context.Background()
	txt, _ := r.LookupTXT(ctx, "example.com")
	txt[0] = "changed"
	mx, _ := r.LookupMX(ctx, "example.com")
	mx[0].Host = "changed."
	ptr, _ := r.LookupAddr(ctx, "192.0.2.1")
	ptr[0] = "changed."

	txt, _ = r.LookupTXT(ctx, "example.com")
	mx, _ = r.LookupMX(ctx, "example.com")
	ptr, _ = r.LookupAddr(ctx, "192.0.2.1")
	assert.Equal(t, []string{"a"}, txt)
	assert.Equal(t, "mx.example.com.", mx[0].Host)
	assert.Equal(t, "mx.example.com", r.MX["example.com"][0].Host, "the fixture is not changed")
	assert.Equal(t, []string{"mx.example.com."}, ptr)
}

func TestResolverMistakes(t *testing.T) {
	ctx := context.Background()
	bad := &policytest.Resolver{
		IP:  map[string][]string{"mx.example.com": {"not-an-ip"}},
		PTR: map[string][]string{"mx.example.com": {"x"}},
		TXT: map[string][]string{"example.com": {"a"}, "EXAMPLE.com.": {"b"}},
	}
	assert.PanicsWithValue(t, `policytest.Resolver: IP["mx.example.com"]: "not-an-ip" is not an IP address`,
		func() { bad.LookupIPAddr(ctx, "mx.example.com") })
	assert.PanicsWithValue(t, `policytest.Resolver: PTR key "mx.example.com" is not an IP address`,
		func() { bad.LookupAddr(ctx, "192.0.2.1") })
	assert.Panics(t, func() { bad.LookupTXT(ctx, "Example.com") })
}

func TestResolverConcurrent(t *testing.T) {
	ctx := context.Background()
	done := make(chan []string)
	for range 8 {
		go func() {
			got, _ := lookup(ctx, &fakeZone, "mx", "example.com")
			done <- got
		}()
	}
	for range 8 {
		got := <-done
		assert.True(t, slices.Equal([]string{"MX1.example.com. 10", "mx2.example.com. 20"}, got))
	}
}
