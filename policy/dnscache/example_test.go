package dnscache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy/dnscache"
)

func Example() {
	// A DNS server on loopback stands in for the real one.
	srv, err := dnstest.Start(
		`example.com. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`example.com. MX 10 mail.example.com.`,
	)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	// nil servers would mean those of /etc/resolv.conf.
	r := dnscache.New([]string{srv.Addr()}, dnscache.WithTimeout(2*time.Second))
	ctx := context.Background()

	for range 3 {
		txt, _ := r.LookupTXT(ctx, "example.com")
		fmt.Println(txt)
	}
	fmt.Println("queries sent:", srv.Queries()) // the other two came from the cache

	mx, _ := r.LookupMX(ctx, "example.com")
	fmt.Println(mx[0].Pref, mx[0].Host)

	_, err = r.LookupTXT(ctx, "_dmarc.example.com")
	var de *net.DNSError
	fmt.Println("not found:", errors.As(err, &de) && de.IsNotFound)

	// Output:
	// [v=spf1 ip4:192.0.2.1 -all]
	// [v=spf1 ip4:192.0.2.1 -all]
	// [v=spf1 ip4:192.0.2.1 -all]
	// queries sent: 1
	// 10 mail.example.com.
	// not found: true
}
