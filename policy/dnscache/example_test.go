package dnscache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/mtakit/mtakit/policy/dnscache"
)

func Example() {
	// A small DNS server on loopback stands in for the real one: it
	// answers example.com's TXT and MX records, NXDOMAIN for any other
	// name, and counts the queries it gets.
	var queries atomic.Int32
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		q := req.Question[0]
		switch {
		case q.Name != "example.com.":
			m.Rcode = dns.RcodeNameError
			soa, _ := dns.NewRR("example.com. 300 SOA ns.example.com. admin.example.com. 1 3600 600 86400 300")
			m.Ns = append(m.Ns, soa)
		case q.Qtype == dns.TypeTXT:
			rr, _ := dns.NewRR(`example.com. 300 TXT "v=spf1 ip4:192.0.2.1 -all"`)
			m.Answer = append(m.Answer, rr)
		case q.Qtype == dns.TypeMX:
			rr, _ := dns.NewRR(`example.com. 300 MX 10 mail.example.com.`)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()

	// Empty Servers would mean those of /etc/resolv.conf; the other zero
	// fields are the defaults (a 1 h cap on positive TTLs, 10,000 answers).
	r := dnscache.New(dnscache.Config{
		Servers: []string{pc.LocalAddr().String()},
		Timeout: 2 * time.Second,
	})
	ctx := context.Background()

	for range 3 {
		txt, _ := r.LookupTXT(ctx, "example.com")
		fmt.Println(txt)
	}
	fmt.Println("queries sent:", queries.Load()) // the other two came from the cache

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
