package queue_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

// Opening a spool and queueing a message, as the smtp package does after the
// preq rules accepted it: Enqueue returns once the message is durable.
func ExampleOpen() {
	dir, _ := os.MkdirTemp("", "spool")
	defer os.RemoveAll(dir)

	sp, err := queue.Open(dir, queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()

	tx := policy.NewTransaction(&policy.Conn{Helo: "client.example.org"}, "msg1")
	tx.From = policy.MustParseAddress("alice@example.org")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("bob@example.com")}}
	raw := "From: alice@example.org\r\nSubject: hi\r\n\r\nHello Bob.\r\n"
	m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err := sp.Enqueue(context.Background(), tx, m); err != nil {
		log.Fatal(err) // answer 451: not queued
	}

	entries, _ := sp.List(queue.Working)
	for _, e := range entries {
		fmt.Println(e.Queue, e.ID, e.Envelope.Rcpts[0].Addr.Address())
	}
	// Output: working msg1 bob@example.com
}

// Running the scheduler: delivery rules route local recipients to a
// maildir; the scheduler runs until its context ends.
func ExampleScheduler() {
	dir, _ := os.MkdirTemp("", "spool")
	defer os.RemoveAll(dir)
	sp, err := queue.Open(filepath.Join(dir, "spool"), queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()

	chain := policy.NewChain()
	chain.Delivery("local", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		if rcpt.Addr.Domain == "example.com" {
			*route = policy.Route{Transport: "maildir"} // mailbox: the local part
		}
		return policy.Next()
	})

	// Signal the example when the maildir delivered (a real server just runs).
	delivered := make(chan struct{}, 1)
	md := &queue.Maildir{Root: filepath.Join(dir, "mail")}
	notify := queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		r := md.Deliver(ctx, d)
		delivered <- struct{}{}
		return r
	})

	sch := queue.NewScheduler(sp, queue.Config{
		Chain:      chain,
		Transports: map[string]queue.Transport{"maildir": notify},
		Hostname:   "mx.example.com",
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sch.Run(ctx) }()

	tx := policy.NewTransaction(&policy.Conn{}, "msg2")
	tx.From = policy.MustParseAddress("alice@example.org")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("Bob@example.com")}}
	raw := "Subject: hi\r\n\r\nHello Bob.\r\n"
	m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err := sp.Enqueue(ctx, tx, m); err != nil {
		log.Fatal(err)
	}
	<-delivered
	cancel()
	<-done

	files, _ := os.ReadDir(filepath.Join(dir, "mail", "bob", "new"))
	b, _ := os.ReadFile(filepath.Join(dir, "mail", "bob", "new", files[0].Name()))
	fmt.Print(string(b))
	// Output:
	// Return-Path: <alice@example.org>
	// Delivered-To: Bob@example.com
	// Subject: hi
	//
	// Hello Bob.
}

// A postq rule that judges incoming mail lets the DSNs of our own queue
// pass: they come from no client, so they have no SPF or DKIM results of
// their own and would fail DMARC.
func ExampleGeneratedKey() {
	onlyIncoming := func(rule policy.MessageRule) policy.MessageRule {
		return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
			if g, ok := queue.GeneratedKey.Get(tx); ok {
				fmt.Println("our own DSN:", g.Report, "for", g.Original)
				return policy.Next()
			}
			return rule(ctx, tx, m)
		}
	}
	quarantineAll := func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		return policy.Quarantine("dmarc")
	}
	chain := &policy.Chain{}
	chain.PostQ("dmarc", onlyIncoming(quarantineAll))

	// What the scheduler gives the rules for a DSN it generated.
	tx := policy.NewTransaction(&policy.Conn{}, "dsn1")
	queue.GeneratedKey.Set(tx, queue.Generated{Report: "failed", Original: "msg1"})
	raw := "From: MAILER-DAEMON@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n...\r\n"
	m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	res := chain.EvalPostQ(context.Background(), tx, m)
	fmt.Println(res.Verdict.Kind == policy.KindQuarantine)
	// Output:
	// our own DSN: failed for msg1
	// false
}
