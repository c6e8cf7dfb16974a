package queue

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// benchMessage returns a message of about size bytes.
func benchMessage(size int) string {
	raw := "From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
	line := strings.Repeat("x", 76) + "\r\n"
	var sb strings.Builder
	sb.WriteString(raw)
	for sb.Len() < size {
		sb.WriteString(line)
	}
	return sb.String()[:size]
}

// benchLoads are the conditions the storage benchmarks run under: alone on
// the filesystem, and with another process writing to it (dd ... conv=fsync
// in a loop, see ddLoop).
var benchLoads = []string{"plain", "dd"}

// ddLoop runs `dd if=/dev/zero of=<dir>/dd.out bs=1M count=256 conv=fsync`
// again and again until the returned stop is called (at most 300 runs, at
// most 10 minutes): another writer on the filesystem, whose dirty pages a
// syncfs(2) must write and an fdatasync(2) of our own file need not. It
// returns once the first dd has started.
func ddLoop(b *testing.B, dir string) (stop func()) {
	b.Helper()
	if _, err := exec.LookPath("dd"); err != nil {
		b.Skip("dd not found")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	started := make(chan struct{})
	done := make(chan struct{})
	out := filepath.Join(dir, "dd.out")
	go func() {
		defer close(done)
		for i := 0; i < 300 && ctx.Err() == nil; i++ {
			cmd := exec.CommandContext(ctx, "dd", "if=/dev/zero", "of="+out, "bs=1M", "count=256", "conv=fsync", "status=none")
			err := cmd.Start()
			if i == 0 {
				close(started)
			}
			if err != nil {
				return
			}
			cmd.Wait()
		}
	}()
	<-started
	return func() {
		cancel()
		<-done
		os.Remove(out)
	}
}

// runConc calls fn b.N times from conc goroutines, b.N in all.
func runConc(b *testing.B, conc int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				fn(int(i))
			}
		})
	}
	wg.Wait()
}

// BenchmarkMaildirSync compares the ways a Maildir delivery is made
// durable, side by side (the sync= sub-benchmarks of one configuration run
// one after the other): tmpfile (the default on Linux: an O_TMPFILE file of
// new/, fdatasync, linkat, a shared fsync of new/), rename (written in
// tmp/, fdatasync, rename, a shared fsync of new/) and syncfs (written in
// tmp/, rename, both made durable by shared rounds of syncfs(2) of the
// filesystem: what deliveries did before, and still do when they join a
// Spool's rounds). 1, 8 and 64 concurrent deliveries into one maildir,
// 4 KiB and 100 KiB, alone on the filesystem and with a dd writing to it.
func BenchmarkMaildirSync(b *testing.B) {
	for _, load := range benchLoads {
		for _, size := range []int{4 << 10, 100 << 10} {
			raw := benchMessage(size)
			for _, conc := range []int{1, 8, 64} {
				for _, mode := range []string{"syncfs", "rename", "tmpfile"} {
					name := fmt.Sprintf("load=%s/size=%dKiB/conc=%d/sync=%s", load, size>>10, conc, mode)
					b.Run(name, func(b *testing.B) {
						dir := b.TempDir()
						md := &Maildir{Root: filepath.Join(dir, "mail")}
						st := md.st()
						st.noTmpfile.Store(mode != "tmpfile")
						var syncs *fsSyncs
						if mode == "syncfs" {
							syncs = &fsSyncs{}
							defer syncs.close()
						}
						deliver := maildirDeliverer(b, md, syncs, raw)
						if !deliver() { // the maildir made
							b.FailNow()
						}
						if load == "dd" {
							defer ddLoop(b, dir)()
						}
						b.SetBytes(int64(size))
						b.ResetTimer()
						runConc(b, conc, func(int) { deliver() })
						b.StopTimer()
						b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
						if mode == "tmpfile" && st.noTmpfile.Load() {
							b.Log("O_TMPFILE refused: measured the rename way")
						}
					})
				}
			}
		}
	}
}

// BenchmarkSpoolMaildir measures the spool and its scheduler delivering
// to a Maildir: conc goroutines enqueue b.N messages durably while the
// scheduler (16 workers) delivers each to one maildir; it ends when the
// last is delivered and removed. The Maildir's syncs either are its own
// (own: fdatasync(2) and fsync(2) of new/, what a Scheduler does) or join
// the spool's syncfs(2) rounds (shared: one round for enqueues and
// deliveries, what it did before issue 21).
func BenchmarkSpoolMaildir(b *testing.B) {
	for _, load := range benchLoads {
		for _, size := range []int{4 << 10, 100 << 10} {
			raw := benchMessage(size)
			for _, conc := range []int{1, 8, 64} {
				for _, mode := range []string{"shared", "own"} {
					name := fmt.Sprintf("load=%s/size=%dKiB/conc=%d/maildir=%s", load, size>>10, conc, mode)
					b.Run(name, func(b *testing.B) { benchSpoolMaildir(b, load, raw, conc, mode == "shared") })
				}
			}
		}
	}
}

func benchSpoolMaildir(b *testing.B, load, raw string, conc int, shared bool) {
	dir := benchDir(b)
	sp, err := Open(filepath.Join(dir, "spool"), SpoolConfig{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	md := &Maildir{Root: filepath.Join(dir, "mail")}
	sch := NewScheduler(sp, Config{
		Transports:   map[string]Transport{"maildir": md},
		DefaultRoute: policy.Route{Transport: "maildir"},
		Logger:       quietLogger(),
	})
	if shared {
		sch.syncs = &sp.syncs // as before issue 21
	}
	var left atomic.Int64
	left.Store(int64(b.N))
	done := make(chan struct{})
	sch.afterWork = func(string) {
		if left.Add(-1) == 0 {
			close(done)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { sch.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	if load == "dd" {
		defer ddLoop(b, dir)()
	}
	b.SetBytes(int64(len(raw)))
	cpu := startCPU(b)
	b.ResetTimer()
	runConc(b, conc, func(i int) {
		tx := newTx(fmt.Sprintf("e%d", i), "a@example.org", "john@example.com")
		m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			b.Error(err)
			return
		}
		if err := sp.Enqueue(context.Background(), tx, m); err != nil {
			b.Error(err)
		}
	})
	<-done
	b.StopTimer()
	cpu()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// maildirDeliverer returns a func that delivers raw to john@example.com
// through md.deliver with syncs (nil: the Maildir's own), false on failure.
func maildirDeliverer(b *testing.B, md *Maildir, syncs *fsSyncs, raw string) func() bool {
	tx := newTx("b1", "a@example.org", "john@example.com")
	return func() bool {
		m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			b.Error(err)
			return false
		}
		d := &policy.Delivery{Tx: tx, Rcpts: tx.Rcpts, Route: policy.Route{Transport: "maildir"}, Message: m}
		if r := md.deliver(context.Background(), d, syncs); r[0].Code != 250 {
			b.Error(r)
			return false
		}
		return true
	}
}
