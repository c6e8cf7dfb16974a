package dnscache_test

import (
	"context"
	"testing"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/dnscache"
)

// BenchmarkLookupTXT: one SPF-record lookup against a DNS server on
// loopback, answered from the cache, by this resolver asking every time
// (caching off), and by net.Resolver (Go's stub, a socket per query).
func BenchmarkLookupTXT(b *testing.B) {
	srv := dnstest.New(b, `spf.test. 300 TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.other.test -all"`)
	for _, bc := range []struct {
		name string
		r    policy.Resolver
	}{
		{"cached", dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})},
		{"uncached", dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}, MaxTTL: -1})},
		{"net.Resolver", policy.ResolverAt(srv.Addr())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				txt, err := bc.r.LookupTXT(ctx, "spf.test.")
				if err != nil || len(txt) != 1 {
					b.Fatal(txt, err)
				}
			}
		})
	}
}
