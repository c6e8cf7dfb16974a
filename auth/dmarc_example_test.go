package auth_test

import (
	"context"
	"fmt"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// Evaluate DMARC after DKIM verification; a spoofed From of a domain with
// p=reject is refused.
func ExampleCheckDMARC() {
	// A fake DNS stands in for the Internet's.
	dns := &policytest.Resolver{
		TXT: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject; rua=mailto:dmarc@example.com"}},
	}

	chain := policy.NewChain()
	chain.PreQ("dkim", auth.VerifyDKIM(auth.DKIMVerifyOptions{Resolver: dns, AuthServID: "mx.example.org"}))
	chain.PreQ("dmarc", auth.CheckDMARC(auth.DMARCOptions{Resolver: dns, AuthServID: "mx.example.org"}))

	// Unsigned, from a sender SPF says nothing about.
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "q1")
	tx.From = policy.MustParseAddress("mallory@attacker.example")
	m := exampleMessage(exampleRaw)
	res := chain.EvalPreQ(context.Background(), tx, m)
	fmt.Println(res.Reply)

	d, _ := auth.DMARCResultKey.Get(tx)
	fmt.Println(d.Result, d.Policy, d.PolicyDomain)
	fmt.Println(m.Header.Values("Authentication-Results")[0])
	// Output:
	// 550 5.7.1 Message rejected by the DMARC policy of example.com
	// fail reject example.com
	// mx.example.org; dmarc=fail (p=reject dis=reject) header.from=example.com
}
