package policytest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// blockSenders is a user's rule: refuse mail from blocklisted domains.
func blockSenders(domains ...string) policy.MailRule {
	return func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		for _, d := range domains {
			if tx.From.Domain == d {
				return policy.Deny(550, "5.7.1", "Sender domain blocked")
			}
		}
		return policy.Next()
	}
}

// relayFor is a user's relay rule: accept recipients of our domains, and
// any recipient for a client that authenticated.
func relayFor(local ...string) policy.RcptRule {
	return func(_ context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
		if tx.Conn.Authenticated() {
			return policy.Accept()
		}
		for _, d := range local {
			if r.Addr.Domain == d {
				return policy.Accept()
			}
		}
		return policy.Next() // the chain's default denies: not an open relay
	}
}

// Testing one's own rules: run whole sessions through the chain, and call
// a rule directly with the builders.
func Example() {
	chain := policy.NewChain()
	chain.Mail("blocklist", blockSenders("spam.example"))
	chain.Rcpt("relay", relayFor("example.com"))

	ctx := context.Background()
	sessions := []policytest.Session{
		{From: "alice@spam.example", Rcpts: []string{"bob@example.com"}},
		{From: "carol@example.org", Rcpts: []string{"bob@example.com", "dave@elsewhere.example"}},
		{From: "bob@example.com", AuthUser: "bob", TLS: true, Rcpts: []string{"dave@elsewhere.example"}},
	}
	for _, s := range sessions {
		out, err := policytest.Run(ctx, chain, s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		var replies []string
		for _, r := range out.Rcpts {
			replies = append(replies, r.Reply.String())
		}
		fmt.Printf("%s: stopped=%q mail=%q rcpts=%q\n", s.From, stage(out.Stopped), out.Mail.Reply, strings.Join(replies, " | "))
	}

	// One rule, called directly.
	v := relayFor("example.com")(ctx, policytest.Transaction(policytest.Session{From: "carol@example.org"}),
		policytest.Recipient("dave@elsewhere.example"))
	fmt.Println("relay rule alone:", v)

	// Output:
	// alice@spam.example: stopped="mail" mail="550 5.7.1 Sender domain blocked" rcpts=""
	// carol@example.org: stopped="" mail="250 2.1.0 Sender OK" rcpts="250 2.1.5 Recipient OK | 554 5.7.1 Relay access denied"
	// bob@example.com: stopped="" mail="250 2.1.0 Sender OK" rcpts="250 2.1.5 Recipient OK"
	// relay rule alone: next
}

func stage(s policy.Stage) string {
	if s == 0 {
		return ""
	}
	return s.String()
}

// A Recorder shows which rules ran.
func ExampleRecorder() {
	rec := &policytest.Recorder{}
	chain := &policy.Chain{Observer: rec.Observe}
	chain.Connect("trusted", func(_ context.Context, c *policy.Conn) policy.Verdict {
		if c.Remote.Addr().IsLoopback() {
			return policy.ForceAccept()
		}
		return policy.Next()
	})
	chain.Rcpt("relay", relayFor("example.com"))
	out, _ := policytest.Run(context.Background(), chain, policytest.Session{
		Remote: "127.0.0.1:40000",
		Rcpts:  []string{"anyone@elsewhere.example"},
	})
	fmt.Println(rec.Rules(), out.Rcpts[0].Reply)
	// Output: [trusted] 250 2.1.5 Recipient OK
}

// dnsbl is a user's rule: refuse clients listed in a DNS blocklist zone
// (an A record under the reversed IPv4 address), and ask them to come back
// when the list cannot be asked.
func dnsbl(r policy.Resolver, zone string) policy.ConnectRule {
	return func(ctx context.Context, c *policy.Conn) policy.Verdict {
		ip := c.Remote.Addr().Unmap()
		if !ip.Is4() {
			return policy.Next()
		}
		a := ip.As4()
		name := fmt.Sprintf("%d.%d.%d.%d.%s", a[3], a[2], a[1], a[0], zone)
		_, err := r.LookupIPAddr(ctx, name)
		var dnsErr *net.DNSError
		switch {
		case err == nil:
			return policy.Deny(554, "5.7.1", "Listed at "+zone)
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			return policy.Next()
		default:
			return policy.Defer("4.7.1", "Blocklist unavailable, try again later")
		}
	}
}

// Testing a DNS rule of one's own with a fake resolver: records are given
// in maps, and failures answer as net.Resolver's do.
func ExampleResolver() {
	r := &policytest.Resolver{
		IP: map[string][]string{
			"9.113.0.203.dnsbl.example": {"127.0.0.2"},
		},
		ServFail: []string{"7.113.0.203.dnsbl.example"},
	}
	chain := policy.NewChain()
	chain.Connect("dnsbl", dnsbl(r, "dnsbl.example"))

	for _, remote := range []string{"203.0.113.9", "203.0.113.8", "203.0.113.7"} {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: remote})
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Println(remote, out.Connect.Reply)
	}

	// The rule called directly, as any Go function.
	conn := policytest.Conn(policytest.Session{Remote: "203.0.113.9"})
	fmt.Println(dnsbl(r, "dnsbl.example")(context.Background(), conn))
	// Output:
	// 203.0.113.9 554 5.7.1 Listed at dnsbl.example
	// 203.0.113.8 220 ESMTP ready
	// 203.0.113.7 451 4.7.1 Blocklist unavailable, try again later
	// deny(554 5.7.1 Listed at dnsbl.example)
}
