package auth_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

func ExampleCheckSPF() {
	// A fake DNS stands in for the Internet's (in production: a
	// *net.Resolver or a *dnscache.Resolver).
	dns := &policytest.Resolver{
		TXT: map[string][]string{"example.com": {"v=spf1 ip4:192.0.2.25 -all"}},
	}

	chain := policy.NewChain()
	chain.Mail("spf", auth.CheckSPF(auth.SPFOptions{Identity: auth.SPFBoth, Mode: auth.SPFStrict, Resolver: dns, Receiver: "mx.doe-family.com"}))

	for _, ip := range []string{"192.0.2.25", "203.0.113.9"} {
		conn := &policy.Conn{ID: "c1", Remote: netip.AddrPortFrom(netip.MustParseAddr(ip), 41000), Helo: "[" + ip + "]"}
		tx := policy.NewTransaction(conn, "tx1")
		tx.From = policy.MustParseAddress("alice@example.com")
		res := chain.EvalMail(context.Background(), tx)
		fmt.Println(res.Reply)
		spf, _ := auth.SPFResultKey.Get(tx)
		fmt.Println(spf.Result, spf.Identity, spf.Domain)
	}
	// Output:
	// 250 2.1.0 Sender OK
	// pass mailfrom example.com
	// 550 5.7.23 SPF fail: the domain of alice@example.com does not designate 203.0.113.9 as permitted sender
	// fail mailfrom example.com
}

func ExampleNewResolver() {
	dns := &policytest.Resolver{ServFail: []string{"broken.example"}}
	r := auth.NewResolver(dns, 5*time.Second)
	for _, name := range []string{"nowhere.example", "broken.example"} {
		_, err := r.LookupTXT(context.Background(), name)
		dnsErr := err.(*net.DNSError) // never wrapped: the SPF library asserts it
		fmt.Println(name, dnsErr.IsNotFound, dnsErr.Temporary())
	}
	// Output:
	// nowhere.example true false
	// broken.example false true
}
