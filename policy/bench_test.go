package policy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

// benchChain has 10 rules at every stage, each doing a little real work
// (a comparison on what its stage sees) and saying Next, except the last
// rcpt rule, which accepts.
func benchChain() *policy.Chain {
	c := &policy.Chain{Logger: slog.New(slog.DiscardHandler)}
	blocked := netip.MustParseAddr("203.0.113.66")
	for i := range 10 {
		n := fmt.Sprint(i)
		c.Connect("connect"+n, func(_ context.Context, conn *policy.Conn) policy.Verdict {
			if conn.Remote.Addr() == blocked {
				return policy.Deny(554, "5.7.1", "blocked")
			}
			return policy.Next()
		})
		c.Helo("helo"+n, func(_ context.Context, _ *policy.Conn, helo string) policy.Verdict {
			if helo == "" {
				return policy.Deny(501, "5.5.4", "empty HELO")
			}
			return policy.Next()
		})
		c.Auth("auth"+n, func(_ context.Context, _ *policy.Conn, a policy.AuthInfo) policy.Verdict {
			if a.Identity == "mallory" {
				return policy.Deny(535, "5.7.8", "no")
			}
			return policy.Next()
		})
		c.Mail("mail"+n, func(_ context.Context, tx *policy.Transaction) policy.Verdict {
			if tx.From.Domain == "spam.example" {
				return policy.Deny(550, "5.7.1", "blocked")
			}
			return policy.Next()
		})
		last := i == 9
		c.Rcpt("rcpt"+n, func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
			if last && r.Addr.Domain == "example.com" {
				return policy.Accept()
			}
			return policy.Next()
		})
		c.PreQ("preq"+n, func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
			if m.Header.Has("X-Virus-Infected") {
				return policy.Quarantine("virus")
			}
			return policy.Next()
		})
		c.PostQ("postq"+n, func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
			if m.Header.Get("Subject") == "reject me" {
				return policy.Deny(550, "5.7.1", "no")
			}
			return policy.Next()
		})
		c.Delivery("delivery"+n, func(_ context.Context, _ *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
			if last {
				route.Transport, route.Target = "maildir", r.Addr.Local
			}
			return policy.Next()
		})
	}
	return c
}

const benchMessage = "Received: from client.example.org (client.example.org [192.0.2.10])\r\n" +
	"\tby mx.example.com with ESMTPS id q1; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
	"From: Alice <alice@example.org>\r\n" +
	"To: Bob <bob@example.com>\r\n" +
	"Subject: benchmark\r\n" +
	"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
	"Message-ID: <bench@example.org>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n"

// BenchmarkChain measures one message through connect..delivery with 10
// rules at each stage (80 rules, one recipient), header parsing included.
func BenchmarkChain(b *testing.B) {
	c := benchChain()
	raw := []byte(benchMessage + strings.Repeat("The quick brown fox jumps over the lazy dog.\r\n", 80)) // ~4 KiB
	ctx := context.Background()
	remote := netip.MustParseAddrPort("192.0.2.10:40000")
	from := policy.MustParseAddress("alice@example.org")
	rcpt := policy.Recipient{Addr: policy.MustParseAddress("bob@example.com")}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		conn := &policy.Conn{ID: "c", Remote: remote}
		c.EvalConnect(ctx, conn)
		c.EvalHelo(ctx, conn, "client.example.org")
		c.EvalAuth(ctx, conn, policy.AuthInfo{Mechanism: "PLAIN", Identity: "alice"})
		tx := policy.NewTransaction(conn, "q1")
		tx.From = from
		c.EvalMail(ctx, tx)
		if !c.EvalRcpt(ctx, tx, rcpt).Accepted() {
			b.Fatal("recipient refused")
		}
		tx.Rcpts = append(tx.Rcpts, rcpt)
		m, err := policy.NewMessage(bytes.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			b.Fatal(err)
		}
		c.EvalPreQ(ctx, tx, m)
		c.EvalPostQ(ctx, tx, m)
		var route policy.Route
		c.EvalDelivery(ctx, tx, rcpt, &route)
		if route.Transport != "maildir" {
			b.Fatal("no route")
		}
	}
}

// BenchmarkRule is the cost of one rule evaluation (deadline, trace,
// observer-free).
func BenchmarkRule(b *testing.B) {
	c := &policy.Chain{Logger: slog.New(slog.DiscardHandler)}
	c.Mail("m", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Next() })
	tx := policy.NewTransaction(&policy.Conn{ID: "c"}, "t")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c.EvalMail(ctx, tx)
	}
}

func BenchmarkParseAddress(b *testing.B) {
	for _, s := range []string{
		"<user@example.com>",
		"<First.Last+tag@Sub.Example.COM.>",
		`<"john doe"@example.com>`,
		"<user@bücher.example>",
		"<user@[IPv6:2001:db8::1]>",
	} {
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := policy.ParseAddress(s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadHeader(b *testing.B) {
	hdr := []byte(strings.Repeat("Received: from relay.example.net (relay.example.net [198.51.100.1])\r\n\tby mx.example.com; Mon, 1 Jan 2024 00:00:00 +0000\r\n", 4) +
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to:subject:date;\r\n\tbh=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=;\r\n\tb=" + strings.Repeat("x", 340) + "\r\n" +
		benchMessage + "body\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(hdr)))
	r := bytes.NewReader(hdr)
	br := bufio.NewReaderSize(r, 64<<10)
	for b.Loop() {
		r.Reset(hdr)
		br.Reset(r)
		h, _, _, err := policy.ReadHeader(br, 0)
		if err != nil || h.Len() != 13 {
			b.Fatal(err, h.Len())
		}
	}
}
