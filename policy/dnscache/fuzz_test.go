package dnscache

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzExtract feeds arbitrary replies to the code that reads them: it
// must not panic or loop, and must hand the lookups only records of the
// asked type that they can assert to their Go type, owned by the end of
// the CNAME chain.
func FuzzExtract(f *testing.F) {
	seed := func(rcode int, answer []string, ns []string) {
		m := new(dns.Msg)
		m.SetQuestion("q.test.", dns.TypeTXT)
		m.Response, m.Rcode = true, rcode
		for _, s := range answer {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		for _, s := range ns {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Ns = append(m.Ns, rr)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(dns.TypeTXT))
	}
	seed(dns.RcodeSuccess, []string{`q.test. 60 TXT "a" "b"`}, nil)
	seed(dns.RcodeSuccess, []string{`q.test. 60 CNAME r.test.`, `r.test. 30 TXT "c"`}, nil)
	seed(dns.RcodeSuccess, []string{`q.test. 60 CNAME q.test.`}, nil)
	seed(dns.RcodeSuccess, []string{`q.test. 60 CNAME r.test.`, `r.test. 60 CNAME q.test.`, `s.test. 1 TXT "x"`}, nil)
	seed(dns.RcodeNameError, nil, []string{"test. 60 SOA ns.test. h.test. 1 2 3 4 5"})
	seed(dns.RcodeSuccess, []string{`q.test. 60 MX 10 m.test.`, `q.test. 60 A 192.0.2.1`}, nil)
	f.Add([]byte{}, uint16(dns.TypeA))

	f.Fuzz(func(t *testing.T, wire []byte, qtype uint16) {
		msg := new(dns.Msg)
		if err := msg.Unpack(wire); err != nil {
			return
		}
		a := extract(msg, "q.test.", qtype)
		if len(a.rrs) > 0 && a.ttl > minTTL(a.rrs) {
			t.Fatalf("ttl %d above a record's", a.ttl)
		}
		for _, rr := range a.rrs {
			h := rr.Header()
			if h.Rrtype != qtype || !strings.EqualFold(h.Name, a.end) || !wellTyped(rr, qtype) {
				t.Fatalf("extract returned %v for %s/%d", rr, a.end, qtype)
			}
		}
		negativeTTL(msg)
	})
}

func minTTL(rrs []dns.RR) uint32 {
	m := rrs[0].Header().Ttl
	for _, rr := range rrs {
		m = min(m, rr.Header().Ttl)
	}
	return m
}
