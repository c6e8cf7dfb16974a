package dnstest_test

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/miekg/dns"

	"github.com/mtakit/mtakit/internal/dnstest"
)

func Example() {
	// In a test, use dnstest.New(t, ...), which stops the server at Cleanup.
	srv, err := dnstest.Start(
		`example.com. TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`example.com. MX 10 mail.example.com.`,
		`mail.example.com. A 192.0.2.1`,
		`1.2.0.192.in-addr.arpa. PTR mail.example.com.`,
	)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	r := srv.Resolver() // hand this to the code under test
	ctx := context.Background()

	txt, _ := r.LookupTXT(ctx, "example.com.")
	fmt.Println(txt)
	mx, _ := r.LookupMX(ctx, "example.com.")
	fmt.Println(mx[0].Pref, mx[0].Host)
	names, _ := r.LookupAddr(ctx, "192.0.2.1")
	fmt.Println(names)

	_, err = r.LookupTXT(ctx, "_dmarc.example.com.")
	var de *net.DNSError
	fmt.Println(errors.As(err, &de) && de.IsNotFound)

	srv.Fail("example.com.", dns.RcodeServerFailure)
	_, err = r.LookupTXT(ctx, "example.com.")
	fmt.Println(errors.As(err, &de) && de.IsTemporary)

	// Output:
	// [v=spf1 ip4:192.0.2.1 -all]
	// 10 mail.example.com.
	// [mail.example.com.]
	// true
	// true
}
