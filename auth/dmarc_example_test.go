package auth_test

import (
	"context"
	"fmt"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

// Evaluate DMARC after DKIM verification; a spoofed From of a domain with
// p=reject is refused.
func ExampleCheckDMARC() {
	dns, err := dnstest.Start(`_dmarc.example.com. TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"`)
	if err != nil {
		panic(err)
	}
	defer dns.Close()

	chain := policy.NewChain()
	chain.PreQ("dkim", auth.VerifyDKIM(auth.DKIMVerifyOptions{Resolver: dns.Resolver(), AuthServID: "mx.example.org"}))
	chain.PreQ("dmarc", auth.CheckDMARC(auth.DMARCOptions{Resolver: dns.Resolver(), AuthServID: "mx.example.org"}))

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
