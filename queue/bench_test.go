package queue

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

// BenchmarkEnqueue measures durable enqueue throughput (msgs/s), serial and
// with 64 concurrent callers, with fsync on and (unsafe) off, for 4 KiB and
// 1 MiB messages. Compare the msgs/s metrics of sync=on and sync=off.
func BenchmarkEnqueue(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
		line := strings.Repeat("x", 76) + "\r\n"
		for len(raw) < size {
			raw += line
		}
		raw = raw[:size]
		for _, par := range []int{1, 64} {
			for _, sync := range []bool{true, false} {
				name := fmt.Sprintf("size=%dKiB/conc=%d/sync=%v", size>>10, par, map[bool]string{true: "on", false: "off"}[sync])
				b.Run(name, func(b *testing.B) {
					sp, err := Open(b.TempDir(), SpoolConfig{Logger: quietLogger(), UnsafeNoSync: !sync})
					if err != nil {
						b.Fatal(err)
					}
					defer sp.Close()
					var n atomic.Int64
					enq := func() {
						id := fmt.Sprintf("b%d", n.Add(1))
						tx := newTx(id, "a@example.org", "b@example.com")
						m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
						if err != nil {
							b.Fatal(err)
						}
						if err := sp.Enqueue(context.Background(), tx, m); err != nil {
							b.Fatal(err)
						}
					}
					b.SetBytes(int64(size))
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
}

// BenchmarkDrain measures how fast the scheduler empties a spool (postq
// with no rules, one delivery rule, the "drop" transport), every state
// change durable: msgs/s delivered and removed.
func BenchmarkDrain(b *testing.B) {
	for _, w := range []int{16, 64} {
		b.Run(fmt.Sprintf("workers=%d", w), func(b *testing.B) { benchDrain(b, w) })
	}
}

func benchDrain(b *testing.B, workers int) {
	sp, err := Open(b.TempDir(), SpoolConfig{Logger: quietLogger()})
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
	sch := NewScheduler(sp, Config{Workers: workers, DefaultRoute: policy.Route{Transport: DropTransport}, Logger: quietLogger()})
	sch.afterWork = func(string) {
		if left.Add(-1) == 0 {
			close(done)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.ResetTimer()
	go sch.Run(ctx)
	<-done
	b.StopTimer()
	cancel()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
