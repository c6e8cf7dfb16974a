package jetstream

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
)

// enqueuer is what BenchmarkEnqueue measures: a Store's or the spool's
// Enqueue.
type enqueuer interface {
	Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error
}

// BenchmarkEnqueue measures Enqueue (what an SMTP 250 waits for) with
// concurrent callers against an embedded server, which syncs every write
// (sync_interval: always), for a small and a larger message; and, right
// before each, the filesystem spool's (fsync on) with the same callers
// and message, for the ratio.
func BenchmarkEnqueue(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		for _, conc := range []int{1, 8, 64} {
			for _, store := range []string{"spool", "jetstream"} {
				b.Run(fmt.Sprintf("size=%dKiB/callers=%d/store=%s", size>>10, conc, store), func(b *testing.B) {
					var st enqueuer
					if store == "spool" {
						sp, err := queue.Open(b.TempDir(), queue.SpoolConfig{Logger: quiet()})
						require.NoError(b, err)
						defer sp.Close()
						st = sp
					} else {
						e, err := StartEmbedded(EmbeddedConfig{Dir: b.TempDir(), Logger: quiet()})
						require.NoError(b, err)
						defer e.Close()
						js, err := Open(context.Background(), Config{URL: e.URL(), Logger: quiet()})
						require.NoError(b, err)
						defer js.Close()
						st = js
					}
					ctx := context.Background()
					raw := benchMessage(size)
					var n atomic.Int64
					b.SetBytes(int64(len(raw)))
					b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							id := fmt.Sprintf("b%d", n.Add(1))
							m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
							if err != nil {
								b.Error(err)
								return
							}
							if err := st.Enqueue(ctx, queuetest.NewTx(id, "a@example.org", "b@example.com"), m); err != nil {
								b.Error(err)
								return
							}
						}
					})
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				})
			}
		}
	}
}

// counter is a transport that counts deliveries and signals when want
// messages were delivered.
type counter struct {
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (c *counter) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	if c.n.Add(1) == c.want {
		close(c.done)
	}
	out := make([]policy.Reply, len(d.Rcpts))
	for i := range out {
		out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	}
	return out
}

// BenchmarkEnqueueDeliver is BenchmarkEnqueue with a scheduler delivering
// meanwhile (as a node does), until every message is delivered: the
// whole life of a message in the queue.
func BenchmarkEnqueueDeliver(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		for _, conc := range []int{8, 64} {
			b.Run(fmt.Sprintf("size=%dKiB/callers=%d", size>>10, conc), func(b *testing.B) {
				e, err := StartEmbedded(EmbeddedConfig{Dir: b.TempDir(), Logger: quiet()})
				require.NoError(b, err)
				defer e.Close()
				ctx := context.Background()
				st, err := Open(ctx, Config{URL: e.URL(), Logger: quiet()})
				require.NoError(b, err)
				defer st.Close()
				tr := &counter{want: int64(b.N), done: make(chan struct{})}
				stop := run(b, st, tr)
				defer stop()
				raw := benchMessage(size)
				var n atomic.Int64
				b.SetBytes(int64(len(raw)))
				b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						id := fmt.Sprintf("b%d", n.Add(1))
						m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
						if err != nil {
							b.Error(err)
							return
						}
						if err := st.Enqueue(ctx, queuetest.NewTx(id, "a@example.org", "b@example.com"), m); err != nil {
							b.Error(err)
							return
						}
					}
				})
				select {
				case <-tr.done:
				case <-time.After(2 * time.Minute):
					b.Fatalf("%d of %d delivered", tr.n.Load(), b.N)
				}
			})
		}
	}
}

// benchMessage is a message of about size bytes with the header fields of
// a mail as a server stores it (trace, authentication results, a DKIM
// signature): Message.WriteTo writes a field at a time.
func benchMessage(size int) string {
	head := "Received: from load.example.org (load.example.org [127.0.0.1])\r\n\tby mx.example.net with ESMTP id b1; Fri, 4 Dec 2026 21:00:00 +0000\r\n" +
		"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=example.org\r\n" +
		"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1;\r\n\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBpdHMgc2l6ZQ==\r\n" +
		"Received: from client (client [192.0.2.1])\r\n\tby load.example.org; Fri, 4 Dec 2026 20:59:59 +0000\r\n" +
		"From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\nDate: Fri, 4 Dec 2026 20:59:59 +0000\r\n" +
		"Message-ID: <b1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
	return head + strings.Repeat(strings.Repeat("x", 78)+"\r\n", max(0, size-len(head))/80)
}
