package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy/policytest"
)

// memResolver answers from memory with the error values *net.Resolver
// returns, so the rules see what they would see from DNS, minus the network.
type memResolver map[string][]string

func (r memResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if v, ok := r[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}
func (r memResolver) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}
func (r memResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}
func (r memResolver) LookupAddr(_ context.Context, addr string) ([]string, error) {
	return nil, &net.DNSError{Err: "no such host", Name: addr, IsNotFound: true}
}

// BenchmarkPolicy measures the CPU of the doe-family chain itself per
// message (issue 8: under 50 µs without DNS and disk): relay, SPF against an
// in-memory resolver, DKIM verification (no signature), DMARC, routing, for
// one incoming 4 KiB message to a local recipient; and the same for an
// outgoing message signed with Ed25519.
func BenchmarkPolicy(b *testing.B) {
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
	rs := ruleSet{domains: []string{"doe-family.com"}, internal: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
		resolver: res, hostname: "mx.doe-family.com", signer: signer}
	chain := rs.chain(discardLogger())
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", 4096/78)
	cases := []struct {
		name string
		s    policytest.Session
	}{
		{"incoming", policytest.Session{Remote: "203.0.113.5:4000", Helo: "mail.example.org", From: "news@example.org",
			Rcpts: []string{"jane@doe-family.com"}, Message: "From: <news@example.org>\r\nTo: <jane@doe-family.com>\r\nSubject: hi\r\n\r\n" + body}},
		{"outgoing-signed", policytest.Session{Remote: "192.168.1.10:4000", Helo: "laptop.doe-family.com", From: "john@doe-family.com",
			Rcpts: []string{"friend@example.net"}, Message: "From: <john@doe-family.com>\r\nTo: <friend@example.net>\r\nSubject: hi\r\n\r\n" + body}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				out, err := policytest.Run(ctx, chain, c.s)
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

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
