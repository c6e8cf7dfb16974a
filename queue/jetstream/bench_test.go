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
	"github.com/mtakit/mtakit/queue/queuetest"
)

// BenchmarkEnqueue measures Enqueue (what an SMTP 250 waits for) with
// concurrent callers against an embedded server, which syncs every write
// (sync_interval: always), for a small and a larger message.
func BenchmarkEnqueue(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		for _, conc := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("size=%dKiB/callers=%d", size>>10, conc), func(b *testing.B) {
				e, err := StartEmbedded(EmbeddedConfig{Dir: b.TempDir(), Logger: quiet()})
				require.NoError(b, err)
				defer e.Close()
				ctx := context.Background()
				st, err := Open(ctx, Config{URL: e.URL(), Logger: quiet()})
				require.NoError(b, err)
				defer st.Close()
				raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", size/80)
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
			})
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
				raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", size/80)
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
