package relay_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

func ExampleNewDNSBL() {
	// In production: Resolver is a caching resolver (policy/dnscache) or
	// nil for net.DefaultResolver. Here, a fake DNS where Spamhaus lists
	// 192.0.2.66 and DNSWL lists 192.0.2.77 (which Spamhaus lists too).
	resolver := &policytest.Resolver{IP: map[string][]string{
		"66.2.0.192.zen.spamhaus.org": {"127.0.0.4"},
		"77.2.0.192.zen.spamhaus.org": {"127.0.0.4"},
		"77.2.0.192.list.dnswl.org":   {"127.0.10.2"},
	}}
	spamhaus, _ := relay.ParseDNSBLZone("zen.spamhaus.org=127.0.0.[2..11]*3")
	dnswl, _ := relay.ParseDNSBLZone("list.dnswl.org=127.0.[0..255].[1..3]*-5")
	dnsbl, err := relay.NewDNSBL(relay.DNSBLOptions{
		Zones:     []relay.DNSBLZone{spamhaus, dnswl},
		Threshold: 3,
		Resolver:  resolver,
	})
	if err != nil {
		panic(err)
	}
	chain := policy.NewChain()
	chain.Connect("dnsbl", dnsbl.ConnectRule())

	for _, client := range []string{"192.0.2.66", "192.0.2.77", "192.0.2.88"} {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: client + ":4000"})
		if err != nil {
			panic(err)
		}
		fmt.Println(client, out.Connect.Reply)
	}
	// Output:
	// 192.0.2.66 554 5.7.1 Service unavailable; Client host [192.0.2.66] blocked using zen.spamhaus.org
	// 192.0.2.77 220 ESMTP ready
	// 192.0.2.88 220 ESMTP ready
}

func ExampleNewRateLimiter() {
	limits, err := relay.ParseRateLimits("msgs=2/h,rcpts=100/h,conns=60/m")
	if err != nil {
		panic(err)
	}
	limiter, err := relay.NewRateLimiter(relay.RateLimitOptions{
		Limits:   limits,
		Internal: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
	})
	if err != nil {
		panic(err)
	}
	chain := policy.NewChain()
	chain.Connect("rate-conns", limiter.ConnectRule())
	chain.Mail("rate-msgs", limiter.MailRule())
	chain.Rcpt("rate-rcpts", limiter.RcptRule()) // before the relay rule, so every recipient counts
	chain.Rcpt("relay", relay.CheckRelay(nil, "example.com"))

	for i := range 3 {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{
			Remote: "203.0.113.5:4000", From: "a@elsewhere.test", Rcpts: []string{"john@example.com"},
		})
		if err != nil {
			panic(err)
		}
		fmt.Println(i+1, out.Mail.Reply)
	}
	// Output:
	// 1 250 2.1.0 Sender OK
	// 2 250 2.1.0 Sender OK
	// 3 450 4.7.1 Error: too much mail from [203.0.113.5]
}

func ExampleNewGreylist() {
	dir, err := os.MkdirTemp("", "greylist-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	// A clock to move by hand; leave Now nil in production.
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	greylist, err := relay.NewGreylist(relay.GreylistOptions{
		Dir: dir, // where greylist.json is kept
		// Skip senders whose SPF passed, read from the SPF rule's result
		// (auth.SPFResultKey) in a real server; here, one domain.
		Skip: func(_ context.Context, tx *policy.Transaction) bool { return tx.From.Domain == "trusted.test" },
		Now:  func() time.Time { return now },
	})
	if err != nil {
		panic(err)
	}
	defer greylist.Close() // saves the state
	chain := policy.NewChain()
	chain.Rcpt("greylist", greylist.RcptRule())
	chain.Rcpt("relay", relay.CheckRelay(nil, "example.com"))

	try := func(from string) policy.Reply {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{
			Remote: "203.0.113.5:4000", From: from, Rcpts: []string{"john@example.com"},
		})
		if err != nil {
			panic(err)
		}
		return out.Rcpts[0].Reply
	}
	fmt.Println(try("a@elsewhere.test"))
	now = now.Add(6 * time.Minute) // the sender retries
	fmt.Println(try("a@elsewhere.test"))
	fmt.Println(try("b@trusted.test"))
	// Output:
	// 451 4.7.1 <john@example.com>: Recipient address rejected: Greylisted, try again in 300 seconds
	// 250 2.1.5 Recipient OK
	// 250 2.1.5 Recipient OK
}

func ExampleCheckHelo() {
	chain := policy.NewChain()
	chain.Helo("helo", relay.CheckHelo(relay.HeloOptions{
		Names:    []string{"mx.example.com", "example.com"},
		Addrs:    []netip.Addr{netip.MustParseAddr("192.0.2.25")},
		Internal: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
	}))
	for _, helo := range []string{"mail.elsewhere.test", "[198.51.100.7]", "localhost", "198.51.100.7", "mx.example.com", "[192.0.2.25]"} {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: "203.0.113.5:4000", Helo: helo})
		if err != nil {
			panic(err)
		}
		fmt.Println(out.Helo.Reply)
	}
	// Output:
	// 250 Hello
	// 250 Hello
	// 504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname
	// 501 5.5.2 <198.51.100.7>: Helo command rejected: Invalid name
	// 550 5.7.1 <mx.example.com>: Helo command rejected: that is our own name
	// 550 5.7.1 <[192.0.2.25]>: Helo command rejected: that is our own name
}
