package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

func ExampleCheckRelay() {
	internal, err := relay.ParsePrefixes("127.0.0.0/8, ::1, 192.168.1.0/24")
	if err != nil {
		panic(err)
	}
	chain := policy.NewChain()
	chain.Rcpt("relay", relay.CheckRelay(internal, "example.com"))

	ctx := context.Background()
	outside := &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("203.0.113.7:40000")}
	tx := policy.NewTransaction(outside, "t1")
	tx.From = policy.MustParseAddress("someone@elsewhere.test")
	for _, rcpt := range []string{"john@Example.COM.", "user%elsewhere.test@example.com", "@example.com:user@elsewhere.test", "john@example.com.evil.test"} {
		res := chain.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress(rcpt)})
		fmt.Printf("%-36s %s\n", rcpt, res.Reply)
	}

	internalConn := &policy.Conn{ID: "c2", Remote: netip.MustParseAddrPort("192.168.1.20:40000")}
	tx = policy.NewTransaction(internalConn, "t2")
	res := chain.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("friend@elsewhere.test")})
	fmt.Println("from the LAN:", res.Reply)
	// Output:
	// john@Example.COM.                    250 2.1.5 Recipient OK
	// user%elsewhere.test@example.com      250 2.1.5 Recipient OK
	// @example.com:user@elsewhere.test     554 5.7.1 Relay access denied
	// john@example.com.evil.test           554 5.7.1 Relay access denied
	// from the LAN: 250 2.1.5 Recipient OK
}

func ExamplePolicy() {
	p := relay.NewPolicy([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "example.com")
	chain := policy.NewChain()
	chain.Mail("relay-mail", p.MailRule())
	chain.Rcpt("relay-rcpt", p.RcptRule())

	conn := &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("198.51.100.1:25000")}
	tx := policy.NewTransaction(conn, "t1")
	tx.From = policy.MustParseAddress("ceo@example.com") // spoofed, no AUTH
	fmt.Println(chain.EvalMail(context.Background(), tx).Reply)

	conn.AuthUser = "ceo@example.com"
	fmt.Println(chain.EvalMail(context.Background(), tx).Reply)
	fmt.Println(chain.EvalRcpt(context.Background(), tx, policy.Recipient{Addr: policy.MustParseAddress("x@elsewhere.test")}).Reply)
	// Output:
	// 550 5.7.1 Sender address in a local domain requires authentication
	// 250 2.1.0 Sender OK
	// 250 2.1.5 Recipient OK
}

func ExampleInNetworks() {
	nets, _ := relay.ParsePrefixes("192.168.1.0/24,10.0.0.1")
	fmt.Println(nets)
	fmt.Println(relay.InNetworks(netip.MustParseAddr("::ffff:192.168.1.9"), nets))
	fmt.Println(relay.InNetworks(netip.MustParseAddr("10.0.0.2"), nets))
	// Output:
	// [192.168.1.0/24 10.0.0.1/32]
	// true
	// false
}

// exampleDelivery is a one-message delivery for the examples.
func exampleDelivery(rcpts ...string) *policy.Delivery {
	body := "From: a@example.com\r\nSubject: hello\r\n\r\nHello!\r\n"
	m, err := policy.NewMessage(bytes.NewReader([]byte(body)), int64(len(body)), nil)
	if err != nil {
		panic(err)
	}
	tx := policy.NewTransaction(nil, "q1")
	tx.From = policy.MustParseAddress("a@example.com")
	d := &policy.Delivery{Tx: tx, Message: m}
	for _, r := range rcpts {
		d.Rcpts = append(d.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return d
}

func ExampleMX() {
	// A receiving server on loopback and a fake DNS stand in for the
	// Internet.
	recv, stop, err := newReceiver(receiverOpts{TLS: true})
	if err != nil {
		panic(err)
	}
	defer stop()
	dns := &policytest.Resolver{
		MX: map[string][]*net.MX{
			"dest.test": {{Host: "mx.dest.test", Pref: 10}},
			"void.test": {{Host: ".", Pref: 0}}, // null MX: accepts no mail
		},
		IP: map[string][]string{"mx.dest.test": {"127.0.0.1"}},
	}

	mx := &relay.MX{
		Resolver: dns,
		Hostname: "mail.example.com",
		Port:     recv.Port, // 25 in production
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range mx.Deliver(ctx, exampleDelivery("bob@dest.test", "nobody@void.test")) {
		fmt.Println(r.Code, r.Enhanced)
	}
	fmt.Println("received over TLS:", recv.messages()[0].TLS)
	// Output:
	// 250 2.0.0
	// 556 5.1.10
	// received over TLS: true
}

func ExampleLMTP() {
	dir, err := os.MkdirTemp("", "lmtp")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "lmtp.sock")
	recv, stop, err := newReceiver(receiverOpts{LMTP: true, Unix: sock})
	if err != nil {
		panic(err)
	}
	defer stop()
	recv.dataReply = func(rcpt string) error {
		if rcpt == "full@example.com" {
			return smtpError(452, [3]int{4, 2, 2}, "Mailbox full")
		}
		return nil
	}

	l := &relay.LMTP{Network: "unix", Addr: sock, Hostname: "mail.example.com"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range l.Deliver(ctx, exampleDelivery("john@example.com", "full@example.com")) {
		fmt.Println(r.Code, r.Enhanced)
	}
	// Output:
	// 250 2.0.0
	// 452 4.2.2
}

func ExampleSmarthost() {
	recv, stop, err := newReceiver(receiverOpts{TLS: true, Users: map[string]string{"me": "pw"}})
	if err != nil {
		panic(err)
	}
	defer stop()

	h := &relay.Smarthost{
		Addr:     recv.Addr, // "smtp.provider.test:587"
		Hostname: "mail.example.com",
		TLS:      relay.TLSRequired,
		// In production leave TLSConfig nil to verify against the
		// system roots; the test server's certificate is self-signed.
		TLSConfig: exampleTLS(),
		Username:  "me",
		Password:  "pw",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fmt.Println(h.Deliver(ctx, exampleDelivery("friend@elsewhere.test"))[0].Code)
	fmt.Println("authenticated as", recv.messages()[0].AuthUser)
	// Output:
	// 250
	// authenticated as me
}
