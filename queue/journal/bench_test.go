package journal_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/journal"
)

// benchStores opens each store compared: the journal and the spool.
var benchStores = []struct {
	name string
	open func(b *testing.B, dir string) mtakit.Store
}{
	{"journal", func(b *testing.B, dir string) mtakit.Store {
		st, err := journal.Open(context.Background(), journal.Config{Dir: dir, Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}
		return st
	}},
	{"spool", func(b *testing.B, dir string) mtakit.Store {
		st, err := queue.Open(dir, queue.SpoolConfig{Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}
		return st
	}},
}

func benchMessage(size int) string {
	raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
	line := strings.Repeat("x", 76) + "\r\n"
	for len(raw) < size {
		raw += line
	}
	return raw[:size-2] + "\r\n"
}

// warmUp enqueues one message (and removes it), so that the store's
// start (the journal's first segment, zero-filled) is not timed.
func warmUp(b *testing.B, st mtakit.Store) {
	raw := benchMessage(1024)
	tx := policy.NewTransaction(&policy.Conn{ID: "c"}, "warmup")
	tx.From = policy.MustParseAddress("a@example.org")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("b@example.com")}}
	m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err := st.Enqueue(context.Background(), tx, m); err != nil {
		b.Fatal(err)
	}
	if err := st.Remove(context.Background(), queue.Working, "warmup"); err != nil {
		b.Fatal(err)
	}
}

// parallel runs fn b.N times from conc goroutines.
func parallel(b *testing.B, conc int, fn func(i int64)) {
	var n atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkEnqueue measures durable Enqueue (msgs/s) on the journal and on
// the spool, 4 KiB and 100 KiB messages, 1, 8 and 64 callers at once.
//
//	go test -run '^$' -bench Enqueue -benchtime 2000x ./queue/journal/
func BenchmarkEnqueue(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		raw := benchMessage(size)
		for _, conc := range []int{1, 8, 64} {
			for _, sto := range benchStores {
				b.Run(fmt.Sprintf("size=%dKiB/conc=%d/store=%s", size>>10, conc, sto.name), func(b *testing.B) {
					st := sto.open(b, b.TempDir())
					defer st.Close()
					warmUp(b, st)
					b.SetBytes(int64(size))
					b.ResetTimer()
					parallel(b, conc, func(i int64) {
						tx := policy.NewTransaction(&policy.Conn{ID: "c"}, fmt.Sprintf("b%d", i))
						tx.From = policy.MustParseAddress("a@example.org")
						tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("b@example.com")}}
						m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
						if err := st.Enqueue(context.Background(), tx, m); err != nil {
							b.Error(err)
						}
					})
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				})
			}
		}
	}
}

// countingTransport hands each delivery to a Maildir and says when want
// recipients were delivered.
type countingTransport struct {
	md   *queue.Maildir
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (c *countingTransport) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	r := c.md.Deliver(ctx, d)
	if c.n.Add(int64(len(d.Rcpts))) == c.want {
		close(c.done)
	}
	return r
}

// BenchmarkCycle measures the whole path (msgs/s): conc callers enqueue,
// a Scheduler delivers each message to a Maildir on the same filesystem
// and removes it; timed until the last delivery.
//
//	go test -run '^$' -bench Cycle -benchtime 2000x ./queue/journal/
func BenchmarkCycle(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		raw := benchMessage(size)
		for _, conc := range []int{1, 8, 64} {
			for _, sto := range benchStores {
				b.Run(fmt.Sprintf("size=%dKiB/conc=%d/store=%s", size>>10, conc, sto.name), func(b *testing.B) {
					dir := b.TempDir()
					st := sto.open(b, dir+"/q")
					defer st.Close()
					warmUp(b, st) // before the scheduler runs, which would deliver it
					tr := &countingTransport{md: &queue.Maildir{Root: dir + "/mail"}, want: int64(b.N), done: make(chan struct{})}
					sch := queue.NewScheduler(st, queue.Config{
						Transports:   map[string]queue.Transport{"maildir": tr},
						DefaultRoute: policy.Route{Transport: "maildir"},
						Logger:       quiet(),
					})
					ctx, cancel := context.WithCancel(context.Background())
					stopped := make(chan struct{})
					go func() { defer close(stopped); sch.Run(ctx) }()
					b.SetBytes(int64(size))
					b.ResetTimer()
					parallel(b, conc, func(i int64) {
						tx := policy.NewTransaction(&policy.Conn{ID: "c"}, fmt.Sprintf("b%d", i))
						tx.From = policy.MustParseAddress("a@example.org")
						tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("b@example.com")}}
						m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
						if err := st.Enqueue(context.Background(), tx, m); err != nil {
							b.Error(err)
						}
					})
					<-tr.done
					b.StopTimer()
					cancel()
					<-stopped
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				})
			}
		}
	}
}
