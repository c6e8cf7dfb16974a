package policytest_test

import (
	"context"
	"fmt"
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
