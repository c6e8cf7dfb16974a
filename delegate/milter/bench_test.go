package milter

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// startNoOp starts a milter that continues at every stage (go-milter's
// NoOpMilter), on loopback.
func startNoOp(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }), gomilter.WithActions(allActions))
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "inet:" + ln.Addr().String()
}

// benchMessage is a small message (about 1.5 KiB).
var benchMessage = "Received: from client.example (unknown [127.0.0.1]) by mx.example with ESMTP id x; Fri, 4 Dec 2026 20:00:00 +0000\r\n" +
	"From: <alice@sender.example>\r\nTo: <bob@rcpt.example>\r\nSubject: hello\r\nMessage-ID: <1@sender.example>\r\n" +
	"Date: Fri, 4 Dec 2026 20:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" +
	strings.Repeat("Hi Bob, this is a line of the body of a small message.\r\n", 24)

// runMessage runs the mail, rcpt and preq rules of m for one message on c.
func runMessage(b *testing.B, rules [3]any, c *policy.Conn, i int) {
	ctx := context.Background()
	tx := policy.NewTransaction(c, "bench"+strings.Repeat("x", i%2))
	tx.From = policy.MustParseAddress("alice@sender.example")
	rcpt := policy.Recipient{Addr: policy.MustParseAddress("bob@rcpt.example")}
	if v := rules[0].(policy.MailRule)(ctx, tx); v.Kind != policy.KindNext {
		b.Fatal(v)
	}
	if v := rules[1].(policy.RcptRule)(ctx, tx, rcpt); v.Kind != policy.KindNext {
		b.Fatal(v)
	}
	tx.Rcpts = append(tx.Rcpts, rcpt)
	msg, err := policy.NewMessage(strings.NewReader(benchMessage), int64(len(benchMessage)), nil)
	if err != nil {
		b.Fatal(err)
	}
	if v := rules[2].(policy.MessageRule)(ctx, tx, msg); v.Kind != policy.KindNext {
		b.Fatal(v)
	}
}

// BenchmarkMessage is the cost of one message's milter round trips
// (MAIL, RCPT, DATA, 8 header fields, end of header, one body chunk, end
// of message) to a milter on loopback, on a connection kept for the SMTP
// session. The milter runs in the same process: the allocations are
// both sides'.
func BenchmarkMessage(b *testing.B) {
	m, err := New(Options{Addr: startNoOp(b), Hostname: "mx.example", IdleTimeout: time.Minute})
	require.NoError(b, err)
	b.Cleanup(func() { m.Close() })
	c := &policy.Conn{ID: "bench", Remote: netip.MustParseAddrPort("127.0.0.1:40000"), Helo: "client.example"}
	rules := [3]any{m.MailRule(), m.RcptRule(), m.MessageRule()}
	runMessage(b, rules, c, 0) // connect
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runMessage(b, rules, c, i+1)
	}
}

// BenchmarkSession adds to BenchmarkMessage what an SMTP session of one
// message costs: dialling, negotiating, connect, HELO and QUIT.
func BenchmarkSession(b *testing.B) {
	m, err := New(Options{Addr: startNoOp(b), Hostname: "mx.example", IdleTimeout: time.Minute})
	require.NoError(b, err)
	b.Cleanup(func() { m.Close() })
	rules := [3]any{m.MailRule(), m.RcptRule(), m.MessageRule()}
	connect, helo := m.ConnectRule(), m.HeloRule()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := &policy.Conn{ID: "bench", Remote: netip.MustParseAddrPort("127.0.0.1:40000"), Helo: "client.example"}
		if v := connect(context.Background(), c); v.Kind != policy.KindNext {
			b.Fatal(v)
		}
		if v := helo(context.Background(), c, c.Helo); v.Kind != policy.KindNext {
			b.Fatal(v)
		}
		runMessage(b, rules, c, i)
		m.closeSession(c)
	}
}
