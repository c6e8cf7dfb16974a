package dnstest_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
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
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

// exchange sends one raw query to the server, for checks below the level
// of net.Resolver (TTLs, flags, string splitting).
func exchange(t *testing.T, s *dnstest.Server, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, false)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, s.Addr())
	require.NoError(t, err)
	return r
}

func dnsErr(t *testing.T, err error) *net.DNSError {
	t.Helper()
	require.Error(t, err)
	var de *net.DNSError
	require.True(t, errors.As(err, &de), "want *net.DNSError, got %T: %v", err, err)
	return de
}

func zone() []string {
	return []string{
		`a.test. 60 IN A 192.0.2.10`,
		`a.test. A 192.0.2.11`,
		`v6.test. AAAA 2001:db8::1`,
		`both.test. A 192.0.2.20`,
		`both.test. AAAA 2001:db8::20`,
		`mx.test. IN MX 10 mail.test.`,
		`mx.test. IN MX 20 backup.test.`,
		`mail.test. IN A 192.0.2.25`,
		`example.com. 300 IN TXT "v=spf1 ip4:1.2.3.4 -all"`,
		`10.2.0.192.in-addr.arpa. IN PTR a.test.`,
		`1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR v6.test.`,
		`www.test. CNAME a.test.`,
		`spf-alias.test. CNAME example.com.`,
		`alias.test. CNAME alias2.test.`,
		`alias2.test. CNAME a.test.`,
		`dangling.test. CNAME nowhere.test.`,
		`*.wild.test. TXT "wildcard"`,
		`*.wild.test. A 192.0.2.99`,
		`exact.wild.test. TXT "exact"`,
		`deep.ent.test. TXT "below an empty non-terminal"`,
	}
}

func TestLookups(t *testing.T) {
	s := dnstest.New(t, zone()...)
	r := s.Resolver()

	tests := []struct {
		name string
		do   func(context.Context) (any, error)
		want any
	}{
		{"A", func(c context.Context) (any, error) { return r.LookupHost(c, "a.test.") },
			[]string{"192.0.2.10", "192.0.2.11"}},
		{"A is case-insensitive", func(c context.Context) (any, error) { return r.LookupHost(c, "A.TeSt.") },
			[]string{"192.0.2.10", "192.0.2.11"}},
		{"AAAA", func(c context.Context) (any, error) { return r.LookupIP(c, "ip6", "v6.test.") },
			[]net.IP{net.ParseIP("2001:db8::1")}},
		{"A and AAAA", func(c context.Context) (any, error) { return r.LookupHost(c, "both.test.") },
			[]string{"192.0.2.20", "2001:db8::20"}},
		{"MX", func(c context.Context) (any, error) {
			mxs, err := r.LookupMX(c, "mx.test.")
			var out []string
			for _, mx := range mxs {
				out = append(out, fmt.Sprintf("%d %s", mx.Pref, mx.Host))
			}
			return out, err
		}, []string{"10 mail.test.", "20 backup.test."}},
		{"TXT", func(c context.Context) (any, error) { return r.LookupTXT(c, "example.com.") },
			[]string{"v=spf1 ip4:1.2.3.4 -all"}},
		{"TXT upper-case query", func(c context.Context) (any, error) { return r.LookupTXT(c, "EXAMPLE.COM.") },
			[]string{"v=spf1 ip4:1.2.3.4 -all"}},
		{"PTR v4", func(c context.Context) (any, error) { return r.LookupAddr(c, "192.0.2.10") },
			[]string{"a.test."}},
		{"PTR v6", func(c context.Context) (any, error) { return r.LookupAddr(c, "2001:db8::1") },
			[]string{"v6.test."}},
		{"CNAME", func(c context.Context) (any, error) { return r.LookupCNAME(c, "www.test.") },
			"a.test."},
		{"TXT through a CNAME", func(c context.Context) (any, error) { return r.LookupTXT(c, "spf-alias.test.") },
			[]string{"v=spf1 ip4:1.2.3.4 -all"}},
		{"A through a CNAME chain", func(c context.Context) (any, error) { return r.LookupHost(c, "alias.test.") },
			[]string{"192.0.2.10", "192.0.2.11"}},
		{"wildcard TXT", func(c context.Context) (any, error) { return r.LookupTXT(c, "anything.wild.test.") },
			[]string{"wildcard"}},
		{"wildcard several labels down", func(c context.Context) (any, error) { return r.LookupHost(c, "x.y.wild.test.") },
			[]string{"192.0.2.99"}},
		{"existing name beats wildcard", func(c context.Context) (any, error) { return r.LookupTXT(c, "exact.wild.test.") },
			[]string{"exact"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.do(ctx(t))
			require.NoError(t, err)
			if want, ok := tt.want.([]string); ok {
				g := slices.Clone(got.([]string))
				slices.Sort(g)
				assert.Equal(t, want, g)
				return
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

// Go's LookupCNAME sends A, AAAA and CNAME queries in parallel and takes
// the name from whichever useful answer arrives first: the owner of the A
// records (the end of the chain) or the target of the CNAME query (the
// first hop). For a chain of two or more the result is therefore racy.
func TestCNAMEChainIsRacyInGo(t *testing.T) {
	s := dnstest.New(t, zone()...)
	for range 10 {
		cname, err := s.Resolver().LookupCNAME(ctx(t), "alias.test.")
		require.NoError(t, err)
		assert.Contains(t, []string{"alias2.test.", "a.test."}, cname)
	}
	m := exchange(t, s, "udp", "alias.test.", dns.TypeA)
	require.Len(t, m.Answer, 4, "whole chain in one answer")
	assert.Equal(t, "alias.test.", m.Answer[0].Header().Name)
	assert.Equal(t, "alias2.test.", m.Answer[1].Header().Name)
	assert.Equal(t, "a.test.", m.Answer[2].Header().Name)
	m = exchange(t, s, "udp", "alias.test.", dns.TypeCNAME)
	require.Len(t, m.Answer, 1, "a CNAME query gets only the first CNAME")
}

func TestNegativeAnswers(t *testing.T) {
	s := dnstest.New(t, zone()...)
	r := s.Resolver()

	tests := []struct {
		name  string
		qname string
		qtype uint16
		rcode int
	}{
		{"NXDOMAIN", "missing.test.", dns.TypeTXT, dns.RcodeNameError},
		{"NODATA: name has other types", "a.test.", dns.TypeTXT, dns.RcodeSuccess},
		{"NODATA: empty non-terminal", "ent.test.", dns.TypeTXT, dns.RcodeSuccess},
		{"NODATA: wildcard has no MX", "x.wild.test.", dns.TypeMX, dns.RcodeSuccess},
		{"wildcard does not cover the parent", "wild.test.", dns.TypeA, dns.RcodeSuccess},
		{"NXDOMAIN: CNAME to a missing name", "dangling.test.", dns.TypeA, dns.RcodeNameError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := exchange(t, s, "udp", tt.qname, tt.qtype)
			assert.Equal(t, dns.RcodeToString[tt.rcode], dns.RcodeToString[m.Rcode])
			assert.True(t, m.Authoritative)
			for _, rr := range m.Answer {
				assert.NotEqual(t, tt.qtype, rr.Header().Rrtype)
			}

			// Go maps both NXDOMAIN and NODATA to IsNotFound.
			var err error
			switch tt.qtype {
			case dns.TypeTXT:
				_, err = r.LookupTXT(ctx(t), tt.qname)
			case dns.TypeMX:
				_, err = r.LookupMX(ctx(t), tt.qname)
			case dns.TypeA:
				_, err = r.LookupIP(ctx(t), "ip4", tt.qname)
			}
			de := dnsErr(t, err)
			assert.True(t, de.IsNotFound, "%+v", de)
			assert.False(t, de.IsTemporary, "%+v", de)
			assert.False(t, de.IsTimeout, "%+v", de)
		})
	}
}

func TestFail(t *testing.T) {
	tests := []struct {
		name          string
		rcode         int
		wantTemporary bool
		wantNotFound  bool
	}{
		{"SERVFAIL is temporary", dns.RcodeServerFailure, true, false},
		{"REFUSED is a permanent misbehaviour", dns.RcodeRefused, false, false},
		{"NXDOMAIN on a name that has records", dns.RcodeNameError, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.New(t, `broken.test. TXT "v=spf1 -all"`, `broken.test. A 192.0.2.1`)
			s.Fail("BROKEN.test", tt.rcode)
			r := s.Resolver()

			_, err := r.LookupTXT(ctx(t), "broken.test.")
			de := dnsErr(t, err)
			assert.Equal(t, tt.wantTemporary, de.IsTemporary, "%+v", de)
			assert.Equal(t, tt.wantNotFound, de.IsNotFound, "%+v", de)
			assert.False(t, de.IsTimeout)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.Equal(t, tt.wantTemporary, ne.Temporary()) //nolint:staticcheck // go-msgauth uses it

			_, err = r.LookupHost(ctx(t), "broken.test.")
			assert.Equal(t, tt.wantTemporary, dnsErr(t, err).IsTemporary, "any type fails")

			s.Heal("broken.test.")
			txt, err := r.LookupTXT(ctx(t), "broken.test.")
			require.NoError(t, err)
			assert.Equal(t, []string{"v=spf1 -all"}, txt)
		})
	}
}

func TestTimeout(t *testing.T) {
	s := dnstest.New(t, `slow.test. TXT "never seen"`, `fast.test. TXT "ok"`)
	s.Timeout("slow.test.")
	r := s.Resolver()

	for _, lookup := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"TXT", func(c context.Context) error { _, err := r.LookupTXT(c, "slow.test."); return err }},
		{"host", func(c context.Context) error { _, err := r.LookupHost(c, "slow.test."); return err }},
	} {
		t.Run(lookup.name, func(t *testing.T) {
			c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := lookup.do(c)
			elapsed := time.Since(start)

			de := dnsErr(t, err)
			assert.True(t, de.IsTimeout, "%+v", de)
			assert.True(t, de.IsTemporary, "%+v", de)
			assert.False(t, de.IsNotFound, "%+v", de)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Less(t, elapsed, 2*time.Second)
			assert.GreaterOrEqual(t, elapsed, 150*time.Millisecond)
		})
	}

	log := s.QueryLog()
	require.NotEmpty(t, log)
	for _, q := range log {
		assert.False(t, q.Answered)
	}
	assert.Zero(t, s.Queries(), "dropped queries are not answered")

	txt, err := r.LookupTXT(ctx(t), "fast.test.")
	require.NoError(t, err, "other names still answer")
	assert.Equal(t, []string{"ok"}, txt)

	s.Heal("slow.test.")
	txt, err = r.LookupTXT(ctx(t), "slow.test.")
	require.NoError(t, err)
	assert.Equal(t, []string{"never seen"}, txt)
}

func randomBase64(t *testing.T, n int) string {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func TestLongTXT(t *testing.T) {
	// A 2048-bit RSA public key in SubjectPublicKeyInfo DER is 294 bytes.
	dkim2048 := "v=DKIM1; k=rsa; p=" + randomBase64(t, 294)
	require.Greater(t, len(dkim2048), 400)
	// Big enough to exceed Go's 1232-byte EDNS0 buffer: forces TC + TCP.
	huge := "v=DKIM1; k=rsa; p=" + randomBase64(t, 2400)

	tests := []struct {
		name    string
		value   string
		wantTCP bool
	}{
		{"2048-bit DKIM key over UDP", dkim2048, false},
		{"huge record via TCP fallback", huge, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.New(t, `sel._domainkey.example.com. TXT "`+tt.value+`"`)

			// The single quoted string is stored as several <=255-byte strings.
			m := exchange(t, s, "tcp", "sel._domainkey.example.com.", dns.TypeTXT)
			require.Len(t, m.Answer, 1)
			parts := m.Answer[0].(*dns.TXT).Txt
			assert.Len(t, parts, (len(tt.value)+254)/255)
			for _, p := range parts {
				assert.LessOrEqual(t, len(p), 255)
			}
			assert.Equal(t, tt.value, strings.Join(parts, ""))
			s.ResetQueries()

			txt, err := s.Resolver().LookupTXT(ctx(t), "sel._domainkey.example.com.")
			require.NoError(t, err)
			require.Len(t, txt, 1, "Go joins the strings of one record")
			assert.Equal(t, tt.value, txt[0])

			var nets []string
			for _, q := range s.QueryLog() {
				nets = append(nets, q.Net)
			}
			if tt.wantTCP {
				assert.Equal(t, []string{"udp", "tcp"}, nets)
			} else {
				assert.Equal(t, []string{"udp"}, nets)
			}
		})
	}
}

func TestTruncationOverPlainUDP(t *testing.T) {
	s := dnstest.New(t, `big.test. TXT "`+strings.Repeat("x", 1000)+`"`)
	m := new(dns.Msg)
	m.SetQuestion("big.test.", dns.TypeTXT) // no EDNS0: 512-byte limit
	r, _, err := (&dns.Client{Net: "udp", UDPSize: 4096}).Exchange(m, s.Addr())
	require.NoError(t, err)
	assert.True(t, r.Truncated)
}

func TestDefaults(t *testing.T) {
	s := dnstest.New(t,
		`nottl.test. TXT "x"`,
		`withttl.test. 42 IN TXT "y"`,
		`relative.test A 192.0.2.1`,
	)
	for name, ttl := range map[string]uint32{"nottl.test.": 300, "withttl.test.": 42} {
		m := exchange(t, s, "udp", name, dns.TypeTXT)
		require.Len(t, m.Answer, 1, name)
		assert.Equal(t, ttl, m.Answer[0].Header().Ttl, name)
		assert.Equal(t, uint16(dns.ClassINET), m.Answer[0].Header().Class, name)
		assert.True(t, m.Authoritative)
	}
	m := exchange(t, s, "udp", "relative.test.", dns.TypeA)
	require.Len(t, m.Answer, 1)

	// The answer keeps the case of the question.
	m = exchange(t, s, "udp", "NoTTL.Test.", dns.TypeTXT)
	require.Len(t, m.Answer, 1)
	assert.Equal(t, "NoTTL.Test.", m.Answer[0].Header().Name)
}

func TestBadRecords(t *testing.T) {
	_, err := dnstest.Start(`bad.test. IN A not-an-ip`)
	assert.Error(t, err)

	s := dnstest.New(t)
	assert.Error(t, s.AddRecords(`ok.test. A 192.0.2.1`, `bad.test. MX nope`))
	_, err = s.Resolver().LookupHost(ctx(t), "ok.test.")
	assert.True(t, dnsErr(t, err).IsNotFound, "nothing added on error")
}

func TestAddRemoveWhileServing(t *testing.T) {
	s := dnstest.New(t)
	r := s.Resolver()
	c := ctx(t)

	_, err := r.LookupTXT(c, "live.test.")
	require.True(t, dnsErr(t, err).IsNotFound)

	s.Add(`live.test. TXT "one"`, `live.test. A 192.0.2.1`)
	txt, err := r.LookupTXT(c, "live.test.")
	require.NoError(t, err)
	assert.Equal(t, []string{"one"}, txt)

	s.Add(`live.test. TXT "one"`) // duplicates are ignored
	s.Add(`LIVE.test. TXT "two"`)
	txt, err = r.LookupTXT(c, "live.test.")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"one", "two"}, txt)

	s.Remove("Live.Test", dns.TypeTXT)
	_, err = r.LookupTXT(c, "live.test.")
	assert.True(t, dnsErr(t, err).IsNotFound, "NODATA after removing the TXT")
	addrs, err := r.LookupHost(c, "live.test.")
	require.NoError(t, err, "A records stay")
	assert.Equal(t, []string{"192.0.2.1"}, addrs)

	s.Remove("live.test.", 0)
	m := exchange(t, s, "udp", "live.test.", dns.TypeA)
	assert.Equal(t, dns.RcodeNameError, m.Rcode)

	s.AddPTR("198.51.100.7", "ptr.test")
	names, err := r.LookupAddr(c, "198.51.100.7")
	require.NoError(t, err)
	assert.Equal(t, []string{"ptr.test."}, names)
}

func TestConcurrentLookups(t *testing.T) {
	s := dnstest.New(t, zone()...)
	r := s.Resolver()
	c := ctx(t)

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				name := fmt.Sprintf("g%d-%d.test.", i, j)
				s.Add(name + ` TXT "` + name + `"`)
				txt, err := r.LookupTXT(c, name)
				if assert.NoError(t, err) {
					assert.Equal(t, []string{name}, txt)
				}
				addrs, err := r.LookupHost(c, "a.test.")
				if assert.NoError(t, err) {
					assert.Len(t, addrs, 2)
				}
				_, err = r.LookupMX(c, "missing.test.")
				assert.True(t, dnsErr(t, err).IsNotFound)
				if j%2 == 0 {
					s.Remove(name, dns.TypeTXT)
				}
			}
		}()
	}
	wg.Wait()
	assert.GreaterOrEqual(t, s.Queries(), 20*10*3)
}

func TestResolverNeverLeaves(t *testing.T) {
	// A name that the system resolver could answer must not be answered:
	// only this server's zone counts.
	s := dnstest.New(t)
	_, err := s.Resolver().LookupHost(ctx(t), "example.org.")
	assert.True(t, dnsErr(t, err).IsNotFound)
	assert.Positive(t, s.Queries())
}

func TestCloseTwice(t *testing.T) {
	s, err := dnstest.Start(`a.test. A 192.0.2.1`)
	require.NoError(t, err)
	s.Close()
	s.Close()
}

func TestCancelInterruptsQuery(t *testing.T) {
	s := dnstest.New(t, `slow.test. TXT "x"`)
	s.Timeout("slow.test.")
	c, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := s.Resolver().LookupTXT(c, "slow.test.")
	assert.Less(t, time.Since(start), time.Second)
	dnsErr(t, err)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestQueryCounts(t *testing.T) {
	s := dnstest.New(t, `x.test. TXT "x"`)
	r := s.Resolver()
	_, err := r.LookupTXT(ctx(t), "x.test.")
	require.NoError(t, err)
	assert.Equal(t, 1, s.Queries())
	assert.Equal(t, []dnstest.Query{{Name: "x.test.", Type: dns.TypeTXT, Net: "udp", Answered: true}}, s.QueryLog())

	// Go retries SERVFAIL (resolv.conf "attempts", 2 by default, times the
	// number of nameservers), so a failing name is asked more than once.
	s.ResetQueries()
	s.Fail("x.test.", dns.RcodeServerFailure)
	_, err = r.LookupTXT(ctx(t), "x.test.")
	require.Error(t, err)
	assert.GreaterOrEqual(t, s.Queries(), 2)
}
