package mtakit_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// A server for example.com: a relay rule, a durable queue and a transport
// that prints what it delivers. Run (or Serve, given listeners) runs it
// until its context ends, then stops it in order.
func ExampleServer() {
	chain := policy.NewChain()
	chain.Rcpt("local-only", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		if rcpt.Addr.Domain == "example.com" {
			return policy.Accept()
		}
		return policy.Next() // refused by the chain's default: no open relay
	})

	dir, err := os.MkdirTemp("", "mtakit-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	spool, err := queue.Open(dir, queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	delivered := make(chan string)
	srv := &mtakit.Server{
		Hostname: "mx.example.com",
		Chain:    chain,
		Store:    spool,
		Logger:   slog.New(slog.DiscardHandler),
		SMTP:     smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}},
		Delivery: queue.Config{
			Transports: map[string]queue.Transport{"print": queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
				delivered <- fmt.Sprintf("delivered to %s from %s", d.Rcpts[0].Addr, d.Tx.From)
				return make([]policy.Reply, len(d.Rcpts)) // zero replies: all delivered
			})},
			DefaultRoute: policy.Route{Transport: "print"},
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, []net.Listener{ln}) }()

	c, err := gosmtp.Dial(ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	c.Hello("client.example.org")
	err = c.SendMail("alice@example.org", []string{"bob@example.com"}, strings.NewReader("Subject: hello\r\n\r\nHi Bob.\r\n"))
	fmt.Println("send error:", err)
	c.Quit()
	fmt.Println(<-delivered)

	stop()
	fmt.Println("stopped:", <-done)
	// Output:
	// send error: <nil>
	// delivered to bob@example.com from alice@example.org
	// stopped: <nil>
}
