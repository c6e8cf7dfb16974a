package relay_test

import (
	"testing"

	"github.com/mtakit/mtakit/relay"
)

// FuzzParseDNSBLZone: the parser never panics, and what it accepts makes
// a DNSBL and reads back from its String.
func FuzzParseDNSBLZone(f *testing.F) {
	for _, s := range []string{"zen.spamhaus.org", "zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org=127.0.[0..255].[1;3]*-5", "a.b=1.2.3.[4", "x*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		z, err := relay.ParseDNSBLZone(s)
		if err != nil {
			return
		}
		again, err := relay.ParseDNSBLZone(z.String())
		if err != nil || again != z {
			t.Fatalf("%q parsed as %+v, whose String %q gives %+v, %v", s, z, z.String(), again, err)
		}
		if _, err := relay.NewDNSBL(relay.DNSBLOptions{Zones: []relay.DNSBLZone{z}}); err != nil {
			t.Fatalf("%q parsed but NewDNSBL refused it: %v", s, err)
		}
	})
}

// FuzzParseRateLimits: the parser never panics, and what it accepts makes
// a RateLimiter.
func FuzzParseRateLimits(f *testing.F) {
	for _, s := range []string{"msgs=200/h,rcpts=1000/h,conns=60/m", "msgs=off", "rcpts=3/90s", "conns=1/0s", ","} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := relay.ParseRateLimits(s)
		if err != nil {
			return
		}
		if _, err := relay.NewRateLimiter(relay.RateLimitOptions{Limits: l}); err != nil {
			t.Fatalf("%q parsed as %+v but NewRateLimiter refused it: %v", s, l, err)
		}
	})
}
