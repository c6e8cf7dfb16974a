package dnscache_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/dnscache"
)

// TestSPFThroughCache: the blitiri SPF library (through auth.CheckSPF)
// tells none, temperror and the rest apart from this resolver's errors
// exactly as it does from net.Resolver's.
func TestSPFThroughCache(t *testing.T) {
	srv := dnstest.New(t,
		`pass.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`fail.test. TXT "v=spf1 ip4:192.0.2.99 -all"`,
		`include.test. TXT "v=spf1 include:pass.test -all"`,
		`nodata.test. A 192.0.2.10`,
		`mx.test. TXT "v=spf1 mx -all"`,
		`mx.test. MX 10 mail.mx.test.`,
		`mail.mx.test. A 192.0.2.10`,
		`broken.test. TXT "v=spf1 include:servfail.test -all"`,
	)
	srv.Fail("servfail.test.", dns.RcodeServerFailure)
	srv.Timeout("slow.test.")
	r := dnscache.New(dnscache.Config{Servers: []string{srv.Addr()}})

	tests := []struct {
		domain string
		want   auth.SPFStatus
	}{
		{"pass.test", auth.SPFPass},
		{"fail.test", auth.SPFFail},
		{"include.test", auth.SPFPass},
		{"mx.test", auth.SPFPass},
		{"nothing.test", auth.SPFNone}, // NXDOMAIN
		{"nodata.test", auth.SPFNone},  // NODATA
		{"servfail.test", auth.SPFTempError},
		{"broken.test", auth.SPFTempError}, // an include that fails
		{"slow.test", auth.SPFTempError},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			for _, res := range []struct {
				name string
				r    policy.Resolver
			}{{"dnscache", r}, {"net.Resolver", srv.Resolver()}} {
				rule := auth.CheckSPF(auth.SPFOptions{Identity: auth.SPFMailFrom, Mode: auth.SPFSoft, Resolver: res.r, Receiver: "mx.test", Timeout: 300 * time.Millisecond})
				conn := &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("192.0.2.10:40000"), Helo: "client.test"}
				tx := policy.NewTransaction(conn, "tx1")
				tx.From = policy.MustParseAddress("someone@" + tt.domain)
				rule(context.Background(), tx)
				got, ok := auth.SPFResultKey.Get(tx)
				require.True(t, ok)
				assert.Equal(t, tt.want, got.Result, "%s: %s", res.name, got.Problem)
			}
		})
	}
}
