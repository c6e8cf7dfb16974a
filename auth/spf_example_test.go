package auth_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

func ExampleCheckSPF() {
	// A DNS server on loopback stands in for the Internet's.
	dnsSrv, err := dnstest.Start(`example.com. TXT "v=spf1 ip4:192.0.2.25 -all"`)
	if err != nil {
		panic(err)
	}
	defer dnsSrv.Close()

	chain := policy.NewChain()
	chain.Mail("spf", auth.CheckSPF(auth.SPFOptions{Identity: auth.SPFBoth, Mode: auth.SPFStrict, Resolver: dnsSrv.Resolver(), Receiver: "mx.doe-family.com"}))

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
	dnsSrv, err := dnstest.Start()
	if err != nil {
		panic(err)
	}
	defer dnsSrv.Close()
	r := auth.NewResolver(dnsSrv.Resolver(), 0)
	_, err = r.LookupTXT(context.Background(), "nowhere.example")
	dnsErr := err.(interface{ Temporary() bool })
	fmt.Println(dnsErr.Temporary())
	// Output: false
}
