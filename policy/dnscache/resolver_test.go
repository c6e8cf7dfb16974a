package dnscache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/dnscache"
)

var longTXT = strings.Repeat("k", 600) // three character-strings on the wire

func zone(t *testing.T) *dnstest.Server {
	srv := dnstest.New(t,
		`txt.test. TXT "v=spf1 -all"`,
		`multi.test. TXT "part one " "part two"`,
		`two.test. TXT "a"`,
		`two.test. TXT "b"`,
		`long.test. TXT "`+longTXT+`"`,
		`mx.test. MX 20 b.mx.test.`,
		`mx.test. MX 10 a.mx.test.`,
		`mx.test. MX 30 c.mx.test.`,
		`host.test. A 192.0.2.1`,
		`host.test. AAAA 2001:db8::1`,
		`v4.test. A 192.0.2.2`,
		`v6.test. AAAA 2001:db8::2`,
		`alias.test. CNAME alias2.test.`,
		`alias2.test. CNAME txt.test.`,
		`mxalias.test. CNAME mx.test.`,
		`hostalias.test. CNAME host.test.`,
	)
	srv.AddPTR("192.0.2.1", "host.test")
	srv.AddPTR("192.0.2.1", "other.test")
	srv.AddPTR("2001:db8::1", "host6.test")
	return srv
}

// lookups turns each kind of lookup into a comparable list of strings.
var lookups = map[string]func(ctx context.Context, r policy.Resolver, name string) ([]string, error){
	"TXT": func(ctx context.Context, r policy.Resolver, name string) ([]string, error) {
		return r.LookupTXT(ctx, name)
	},
	"MX": func(ctx context.Context, r policy.Resolver, name string) ([]string, error) {
		mxs, err := r.LookupMX(ctx, name)
		var out []string
		for _, mx := range mxs {
			out = append(out, fmt.Sprintf("%d %s", mx.Pref, mx.Host))
		}
		return out, err
	},
	"IP": func(ctx context.Context, r policy.Resolver, name string) ([]string, error) {
		addrs, err := r.LookupIPAddr(ctx, name)
		var out []string
		for _, a := range addrs {
			out = append(out, a.String())
		}
		slices.Sort(out) // net orders by RFC 6724, which depends on the host
		return out, err
	},
	"PTR": func(ctx context.Context, r policy.Resolver, name string) ([]string, error) {
		names, err := r.LookupAddr(ctx, name)
		slices.Sort(names)
		return names, err
	},
}

// TestLookups: each record type answers what net.Resolver answers from the
// same server (the "net" column checks the expectation itself).
func TestLookups(t *testing.T) {
	srv := zone(t)
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
	tests := []struct {
		name, kind, query string
		want              []string
	}{
		{"TXT", "TXT", "txt.test.", []string{"v=spf1 -all"}},
		{"TXT character-strings joined", "TXT", "multi.test.", []string{"part one part two"}},
		{"TXT one string per record", "TXT", "two.test.", []string{"a", "b"}},
		{"TXT over 255 bytes", "TXT", "long.test.", []string{longTXT}},
		{"TXT without trailing dot", "TXT", "txt.test", []string{"v=spf1 -all"}},
		{"TXT in another case", "TXT", "TXT.Test.", []string{"v=spf1 -all"}},
		{"TXT through a CNAME chain", "TXT", "alias.test.", []string{"v=spf1 -all"}},
		{"MX sorted by preference", "MX", "mx.test.", []string{"10 a.mx.test.", "20 b.mx.test.", "30 c.mx.test."}},
		{"MX through a CNAME", "MX", "mxalias.test.", []string{"10 a.mx.test.", "20 b.mx.test.", "30 c.mx.test."}},
		{"A and AAAA", "IP", "host.test.", []string{"192.0.2.1", "2001:db8::1"}},
		{"A only", "IP", "v4.test.", []string{"192.0.2.2"}},
		{"AAAA only", "IP", "v6.test.", []string{"2001:db8::2"}},
		{"addresses through a CNAME", "IP", "hostalias.test.", []string{"192.0.2.1", "2001:db8::1"}},
		{"an IP address is itself", "IP", "192.0.2.77", []string{"192.0.2.77"}},
		{"PTR IPv4, names with trailing dot", "PTR", "192.0.2.1", []string{"host.test.", "other.test."}},
		{"PTR IPv6", "PTR", "2001:db8::1", []string{"host6.test."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			got, err := lookups[tt.kind](ctx, r, tt.query)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got, "dnscache")
			if strings.HasSuffix(tt.query, ".") || net.ParseIP(tt.query) != nil {
				got, err = lookups[tt.kind](ctx, srv.Resolver(), tt.query)
				require.NoError(t, err)
				assert.Equal(t, tt.want, got, "net.Resolver")
			}
			// The second answer, from the cache, is the same.
			got, err = lookups[tt.kind](ctx, r, tt.query)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got, "cached")
		})
	}
}

// TestMXEqualPreferenceShuffled: records of equal preference come in both
// orders (RFC 5321 section 5.1 load spreading), lower preference first.
func TestMXEqualPreferenceShuffled(t *testing.T) {
	srv := dnstest.New(t, `eq.test. MX 10 a.test.`, `eq.test. MX 10 b.test.`, `eq.test. MX 5 first.test.`)
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
	seen := map[string]bool{}
	for range 200 {
		mxs, err := r.LookupMX(context.Background(), "eq.test.")
		require.NoError(t, err)
		require.Len(t, mxs, 3)
		assert.Equal(t, "first.test.", mxs[0].Host)
		seen[mxs[1].Host] = true
	}
	assert.Len(t, seen, 2, "both equal-preference hosts come second some of the time")
	assert.Equal(t, 1, srv.Queries(), "the shuffle is per call, the answer cached")
}

// TestErrors: failures are *net.DNSError classified as net.Resolver
// classifies them (compared with it on the same server), except REFUSED.
func TestErrors(t *testing.T) {
	srv := zone(t)
	srv.Fail("servfail.test.", dns.RcodeServerFailure)
	srv.Fail("refused.test.", dns.RcodeRefused)
	srv.Add(`sub.empty.test. TXT "x"`)
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
	type class struct{ notFound, temporary, timeout bool }
	notFound, temporary := class{notFound: true}, class{temporary: true}
	tests := []struct {
		name, kind, query string
		want              class
		sameAsNet         bool
	}{
		{"NXDOMAIN", "TXT", "nothing.test.", notFound, true},
		{"NODATA: the name has an A record only", "TXT", "v4.test.", notFound, true},
		{"NODATA: an empty non-terminal", "TXT", "empty.test.", notFound, true},
		{"NODATA MX", "MX", "txt.test.", notFound, true},
		{"NXDOMAIN at the end of a CNAME", "TXT", "dangling.test.", notFound, true},
		{"no address at all", "IP", "nothing.test.", notFound, true},
		{"no PTR", "PTR", "192.0.2.99", notFound, true},
		{"SERVFAIL is temporary", "TXT", "servfail.test.", temporary, true},
		{"SERVFAIL for addresses", "IP", "servfail.test.", temporary, true},
		{"REFUSED is temporary (net: permanent)", "TXT", "refused.test.", temporary, false},
		{"a bad name is not found", "TXT", "bad..name.test.", notFound, true},
	}
	srv.Add(`dangling.test. CNAME gone.test.`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			for _, res := range []struct {
				name string
				r    policy.Resolver
			}{{"dnscache", r}, {"net.Resolver", srv.Resolver()}} {
				if res.name != "dnscache" && !tt.sameAsNet {
					continue
				}
				_, err := lookups[tt.kind](ctx, res.r, tt.query)
				var de *net.DNSError
				require.True(t, errors.As(err, &de), "%s: %T %v", res.name, err, err)
				assert.Equal(t, tt.want, class{de.IsNotFound, de.IsTemporary, de.IsTimeout}, "%s: %v", res.name, err)
			}
		})
	}
}

// TestServfailNotCached: a failure is never kept; once the server heals,
// the next lookup gets the records.
func TestServfailNotCached(t *testing.T) {
	for _, rcode := range []int{dns.RcodeServerFailure, dns.RcodeRefused} {
		t.Run(dns.RcodeToString[rcode], func(t *testing.T) {
			srv := dnstest.New(t, `flaky.test. TXT "ok"`)
			r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
			srv.Fail("flaky.test.", rcode)
			_, err := r.LookupTXT(context.Background(), "flaky.test.")
			var de *net.DNSError
			require.ErrorAs(t, err, &de)
			assert.True(t, de.IsTemporary)
			assert.Equal(t, 0, r.Len(), "nothing cached")
			srv.Heal("flaky.test.")
			txt, err := r.LookupTXT(context.Background(), "flaky.test.")
			require.NoError(t, err)
			assert.Equal(t, []string{"ok"}, txt)
		})
	}
}

// TestTimeout: a server that never answers gives a timeout bounded by the
// lookup's context (or by the query timeout), and nothing is cached.
func TestTimeout(t *testing.T) {
	srv := dnstest.New(t, `slow.test. TXT "late"`)
	srv.Timeout("slow.test.")

	t.Run("bounded by the context", func(t *testing.T) {
		r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, Timeout: 20 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.LookupTXT(ctx, "slow.test.")
		var de *net.DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.IsTimeout && de.IsTemporary && !de.IsNotFound, "%+v", de)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 10*time.Second, "the lookup waited for the 20 s query timeout, not its context")
	})
	t.Run("bounded by the query timeout", func(t *testing.T) {
		r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, Timeout: 50 * time.Millisecond})
		_, err := r.LookupTXT(context.Background(), "slow.test.")
		var de *net.DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.IsTimeout && de.IsTemporary, "%+v", de)
		assert.Equal(t, 0, r.Len())
		srv.Heal("slow.test.")
		txt, err := r.LookupTXT(context.Background(), "slow.test.")
		require.NoError(t, err, "the timeout was not cached")
		assert.Equal(t, []string{"late"}, txt)
	})
	t.Run("a canceled context", func(t *testing.T) {
		r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := r.LookupTXT(ctx, "anything.test.")
		assert.ErrorIs(t, err, context.Canceled)
		var de *net.DNSError
		require.ErrorAs(t, err, &de)
		assert.False(t, de.IsNotFound)
	})
}

// TestTruncatedRetriedOverTCP: an answer over the 1232-byte EDNS0 buffer
// comes truncated over UDP (dnstest sets TC) and is asked again over TCP.
func TestTruncatedRetriedOverTCP(t *testing.T) {
	srv := dnstest.New(t)
	var want []string
	for i := range 10 {
		s := fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 200))
		want = append(want, s)
		srv.Add(`big.test. TXT "` + s + `"`)
	}
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})
	got, err := r.LookupTXT(context.Background(), "big.test.")
	require.NoError(t, err)
	slices.Sort(got)
	assert.Equal(t, want, got)
	var nets []string
	for _, q := range srv.QueryLog() {
		nets = append(nets, q.Net)
	}
	assert.Equal(t, []string{"udp", "tcp"}, nets)
}

// TestTTL: an answer is served from the cache until its TTL (the smallest
// along a CNAME chain, capped by Config.MaxTTL) runs out, then asked again.
func TestTTL(t *testing.T) {
	srv := dnstest.New(t,
		`ttl.test. 60 TXT "x"`,
		`day.test. 86400 TXT "y"`,
		`short.test. 10 CNAME ttl.test.`,
		`long.test. 3000 CNAME ttl.test.`,
	)
	tests := []struct {
		name string
		ttl  time.Duration
	}{
		{"ttl.test.", 60 * time.Second},
		{"day.test.", time.Hour},          // capped
		{"short.test.", 10 * time.Second}, // the CNAME's
		{"long.test.", 60 * time.Second},  // the target's
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, MaxTTL: time.Hour})
			dnscache.SetClock(r, clk.Now)
			srv.ResetQueries()
			lookup := func() {
				txt, err := r.LookupTXT(context.Background(), tt.name)
				require.NoError(t, err)
				require.Len(t, txt, 1)
			}
			lookup()
			require.Equal(t, 1, srv.Queries())
			clk.advance(tt.ttl - time.Second)
			lookup()
			assert.Equal(t, 1, srv.Queries(), "within the TTL: from the cache")
			clk.advance(time.Second)
			lookup()
			assert.Equal(t, 2, srv.Queries(), "the TTL ran out: asked again")
		})
	}

	t.Run("a negative MaxTTL turns caching off", func(t *testing.T) {
		r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, MaxTTL: -1})
		srv.ResetQueries()
		for range 3 {
			_, err := r.LookupTXT(context.Background(), "ttl.test.")
			require.NoError(t, err)
		}
		assert.Equal(t, 3, srv.Queries())
	})
}

// TestNegativeCaching: NXDOMAIN and NODATA are kept for min(SOA TTL, SOA
// MINIMUM, cap) when the reply carries an SOA, and not at all otherwise.
func TestNegativeCaching(t *testing.T) {
	tests := []struct {
		name  string
		rcode int
		soa   func(t *testing.T) dns.RR // nil: no SOA
		ttl   time.Duration             // 0: not cached
	}{
		{"NXDOMAIN, SOA MINIMUM smaller", dns.RcodeNameError, func(t *testing.T) dns.RR { return soa(t, 600, 30) }, 30 * time.Second},
		{"NODATA, SOA TTL smaller", dns.RcodeSuccess, func(t *testing.T) dns.RR { return soa(t, 20, 3600) }, 20 * time.Second},
		{"NXDOMAIN, capped at 5 min", dns.RcodeNameError, func(t *testing.T) dns.RR { return soa(t, 86400, 86400) }, 5 * time.Minute},
		{"NXDOMAIN without SOA", dns.RcodeNameError, nil, 0},
		{"NODATA without SOA", dns.RcodeSuccess, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(req *dns.Msg) *dns.Msg {
				m := reply(t, req, tt.rcode)
				if tt.soa != nil {
					m.Ns = []dns.RR{tt.soa(t)}
				}
				return m
			})
			clk := newClock()
			r := dnscache.New(dnscache.Config{Servers: []string{f.addr}})
			dnscache.SetClock(r, clk.Now)
			lookup := func() {
				_, err := r.LookupTXT(context.Background(), "missing.test.")
				var de *net.DNSError
				require.ErrorAs(t, err, &de)
				require.True(t, de.IsNotFound, "%+v", de)
				assert.Equal(t, "missing.test.", de.Name)
			}
			lookup()
			require.Equal(t, 1, f.count())
			if tt.ttl == 0 {
				lookup()
				assert.Equal(t, 2, f.count(), "no SOA: not cached")
				return
			}
			clk.advance(tt.ttl - time.Second)
			lookup()
			assert.Equal(t, 1, f.count(), "within the negative TTL: from the cache")
			clk.advance(time.Second)
			lookup()
			assert.Equal(t, 2, f.count(), "expired: asked again")
		})
	}
}

// TestAliasOnlyAnswer: a server that answers with the CNAME alone (an
// authoritative server whose alias leaves its zone) gets asked for the
// target.
func TestAliasOnlyAnswer(t *testing.T) {
	f := startFake(t, func(req *dns.Msg) *dns.Msg {
		switch strings.ToLower(req.Question[0].Name) {
		case "alias.test.":
			return reply(t, req, dns.RcodeSuccess, "alias.test. 300 IN CNAME target.other.")
		case "target.other.":
			return reply(t, req, dns.RcodeSuccess, `target.other. 300 IN TXT "found"`)
		}
		return reply(t, req, dns.RcodeNameError)
	})
	r := dnscache.New(dnscache.Config{Servers: []string{f.addr}})
	txt, err := r.LookupTXT(context.Background(), "alias.test.")
	require.NoError(t, err)
	assert.Equal(t, []string{"found"}, txt)
	assert.Equal(t, 2, f.count())
}

// TestWrongQuestionRejected: a reply with the right ID but another
// question (a confused or spoofing server) is not taken as the answer.
func TestWrongQuestionRejected(t *testing.T) {
	f := startFake(t, func(req *dns.Msg) *dns.Msg {
		m := reply(t, req, dns.RcodeSuccess, `other.test. 300 IN TXT "not yours"`)
		m.Question[0].Name = "other.test."
		return m
	})
	r := dnscache.New(dnscache.Config{Servers: []string{f.addr}})
	txt, err := r.LookupTXT(context.Background(), "asked.test.")
	assert.Empty(t, txt)
	var de *net.DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.IsTemporary && !de.IsNotFound, "%+v", de)
	assert.Equal(t, 0, r.Len())
}

// TestServersInOrder: a server that fails is passed over for the next.
func TestServersInOrder(t *testing.T) {
	bad := startFake(t, func(req *dns.Msg) *dns.Msg { return reply(t, req, dns.RcodeServerFailure) })
	good := dnstest.New(t, `txt.test. TXT "ok"`)
	r := dnscache.New(dnscache.Config{Servers: []string{bad.addr, good.Addr()}})
	txt, err := r.LookupTXT(context.Background(), "txt.test.")
	require.NoError(t, err)
	assert.Equal(t, []string{"ok"}, txt)
	assert.Equal(t, 1, bad.count())
}

// TestConcurrentLookupsShareOneQuery: lookups of one name and type while a
// query is out wait for it instead of sending their own, and a lookup that
// gives up early does not take the answer from the others.
func TestConcurrentLookupsShareOneQuery(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, func(req *dns.Msg) *dns.Msg {
		<-release
		// TTL 0: never cached, so only the shared query explains one
		// query for every lookup.
		return reply(t, req, dns.RcodeSuccess, `shared.test. 0 IN TXT "one answer"`)
	})
	r := dnscache.New(dnscache.Config{Servers: []string{f.addr}})

	const n = 20
	var started, done sync.WaitGroup
	results := make([][]string, n)
	errs := make([]error, n)
	for i := range n {
		started.Add(1)
		done.Go(func() {
			started.Done()
			results[i], errs[i] = r.LookupTXT(context.Background(), "shared.test.")
		})
	}
	// One more lookup gives up before the answer comes.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, impatient := r.LookupTXT(ctx, "shared.test.")
	started.Wait()
	time.Sleep(200 * time.Millisecond) // let every goroutine reach the lookup
	close(release)
	done.Wait()

	assert.ErrorIs(t, impatient, context.DeadlineExceeded)
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, []string{"one answer"}, results[i])
	}
	assert.Equal(t, 1, f.count(), "%d lookups, one query", n+1)

	_, err := r.LookupTXT(context.Background(), "shared.test.")
	require.NoError(t, err)
	assert.Equal(t, 2, f.count(), "TTL 0: the next lookup asks again")
}

// TestEviction: the cache holds at most Config.MaxEntries answers and drops
// the least recently used one.
func TestEviction(t *testing.T) {
	srv := dnstest.New(t, `a.test. TXT "a"`, `b.test. TXT "b"`, `c.test. TXT "c"`, `d.test. TXT "d"`, `e.test. TXT "e"`)
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, MaxEntries: 3})
	lookup := func(name string) {
		_, err := r.LookupTXT(context.Background(), name)
		require.NoError(t, err)
	}
	for _, n := range []string{"a.test.", "b.test.", "c.test.", "a.test.", "d.test."} {
		lookup(n)
	}
	assert.Equal(t, 3, r.Len())
	srv.ResetQueries()
	lookup("a.test.") // used again after b, kept
	lookup("c.test.")
	lookup("d.test.")
	assert.Equal(t, 0, srv.Queries(), "a, c, d are cached")
	lookup("b.test.")
	assert.Equal(t, 1, srv.Queries(), "b, least recently used, was dropped")

	for i := range 50 {
		lookup([]string{"a.test.", "b.test.", "c.test.", "d.test.", "e.test."}[i%5])
		assert.LessOrEqual(t, r.Len(), 3)
	}
}

// TestServerAddresses: an IPv6-style bracketed host:port is accepted.
func TestServerAddresses(t *testing.T) {
	srv := dnstest.New(t, `txt.test. TXT "ok"`)
	host, port, err := net.SplitHostPort(srv.Addr())
	require.NoError(t, err)
	r := dnscache.New(dnscache.Config{Servers: []string{"[" + host + "]:" + port}})
	_, err = r.LookupTXT(context.Background(), "txt.test.")
	assert.NoError(t, err)
}
