package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy/metrics"
	"github.com/mtakit/mtakit/policy/policytest"
)

// BenchmarkPolicyMetrics is BenchmarkPolicy's incoming case with and
// without a *metrics.Metrics as the chain's Observer, side by side.
func BenchmarkPolicyMetrics(b *testing.B) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := auth.NewDKIMSigner("doe-family.com", "2022-09", key)
	if err != nil {
		b.Fatal(err)
	}
	res := memResolver{
		"example.org":        {"v=spf1 ip4:203.0.113.0/24 -all"},
		"_dmarc.example.org": {"v=DMARC1; p=none"},
	}
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", 4096/78)
	s := policytest.Session{Remote: "203.0.113.5:4000", Helo: "mail.example.org", From: "news@example.org",
		Rcpts: []string{"jane@doe-family.com"}, Message: "From: <news@example.org>\r\nTo: <jane@doe-family.com>\r\nSubject: hi\r\n\r\n" + body}
	for _, on := range []bool{false, true} {
		name := "metrics=false"
		if on {
			name = "metrics=true"
		}
		b.Run(name, func(b *testing.B) {
			rs := ruleSet{domains: []string{"doe-family.com"}, internal: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
				resolver: res, hostname: "mx.doe-family.com", signer: signer}
			chain := rs.chain(discardLogger())
			if on {
				chain.Observer = metrics.New().Observe
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				out, err := policytest.Run(ctx, chain, s)
				if err != nil {
					b.Fatal(err)
				}
				if out.Stopped != 0 || len(out.Accepted) != 1 {
					b.Fatalf("not accepted: stopped at %v: %v", out.Stopped, out.Final())
				}
				out.Message.Close()
			}
		})
	}
}
