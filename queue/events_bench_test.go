package queue

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/metrics"
)

// BenchmarkEnqueueMetrics is BenchmarkEnqueue (4 KiB, fsync on) with and
// without a *metrics.Metrics as SpoolConfig.Events, in one benchmark so
// that the two run side by side.
func BenchmarkEnqueueMetrics(b *testing.B) {
	raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
	for len(raw) < 4<<10 {
		raw += strings.Repeat("x", 76) + "\r\n"
	}
	raw = raw[:4<<10]
	for _, par := range []int{1, 64} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("conc=%d/metrics=%v", par, on), func(b *testing.B) {
				cfg := SpoolConfig{Logger: quietLogger()}
				if on {
					cfg.Events = metrics.New()
				}
				sp, err := Open(b.TempDir(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer sp.Close()
				var n atomic.Int64
				enq := func() {
					tx := newTx(fmt.Sprintf("b%d", n.Add(1)), "a@example.org", "b@example.com")
					m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
					if err != nil {
						b.Fatal(err)
					}
					if err := sp.Enqueue(context.Background(), tx, m); err != nil {
						b.Fatal(err)
					}
				}
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				b.ResetTimer()
				if par == 1 {
					for b.Loop() {
						enq()
					}
				} else {
					b.SetParallelism(par)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							enq()
						}
					})
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkDrainMetrics is BenchmarkDrain (16 workers) with and without
// metrics (Config.Events and SpoolConfig.Events).
func BenchmarkDrainMetrics(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%v", on), func(b *testing.B) {
			var ev Events
			if on {
				ev = metrics.New()
			}
			sp, err := Open(b.TempDir(), SpoolConfig{Logger: quietLogger(), Events: ev})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			raw := testMsg + strings.Repeat("x", 4000) + "\r\n"
			for i := range b.N {
				tx := newTx(fmt.Sprintf("d%d", i), "a@example.org", "b@example.com")
				m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err := sp.Enqueue(context.Background(), tx, m); err != nil {
					b.Fatal(err)
				}
			}
			var left atomic.Int64
			left.Store(int64(b.N))
			done := make(chan struct{})
			sch := NewScheduler(sp, Config{Workers: 16, DefaultRoute: policy.Route{Transport: DropTransport}, Logger: quietLogger(), Events: ev})
			sch.afterWork = func(string) {
				if left.Add(-1) == 0 {
					close(done)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			b.ReportAllocs()
			b.ResetTimer()
			go sch.Run(ctx)
			<-done
			b.StopTimer()
			cancel()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
