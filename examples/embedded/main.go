// Command embedded shows mtakit embedded in a program of your own: a server
// for example.com with two custom rules, a durable queue and Maildir
// delivery, in a few lines.
//
//	go run ./examples/embedded
package main

import (
	"context"
	"log"
	"os"
	"os/signal"
	"strings"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	chain := policy.NewChain()
	// Rule 1: no mail from a domain we have had enough of.
	chain.Mail("blocklist", func(ctx context.Context, tx *policy.Transaction) policy.Verdict {
		if tx.From.Domain == "spam.example" {
			return policy.Deny(550, "5.7.1", "Not from you")
		}
		return policy.Next()
	})
	// Rule 2: accept recipients of example.com only (any other recipient
	// is refused by the chain's default: no open relay).
	chain.Rcpt("local-only", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		if rcpt.Addr.Domain == "example.com" && !strings.HasPrefix(rcpt.Addr.Local, "noreply") {
			return policy.Accept()
		}
		return policy.Next()
	})

	spool, err := queue.Open("./data/embedded/queue", queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	srv := &mtakit.Server{
		Hostname: "mx.example.com",
		Chain:    chain,
		Store:    spool, // closed by Run
		SMTP:     smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Addr: "127.0.0.1:2526", Role: smtp.RoleMTA}}},
		Delivery: queue.Config{
			Transports:   map[string]queue.Transport{"maildir": &queue.Maildir{Root: "./data/embedded/mail"}},
			DefaultRoute: policy.Route{Transport: "maildir"},
		},
	}
	log.Print("embedded server on 127.0.0.1:2526")
	if err := srv.Run(ctx); err != nil { // until Ctrl-C, then a graceful stop
		log.Fatal(err)
	}
}
