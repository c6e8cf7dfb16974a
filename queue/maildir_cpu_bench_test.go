//go:build linux

package queue

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

// cpuNow returns the CPU time the process has used so far, user and
// system, in microseconds (getrusage(2): every thread, the kernel's work
// in our system calls included, not the kernel threads' such as jbd2's).
func cpuNow(b *testing.B) (user, sys float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	us := func(t syscall.Timeval) float64 { return float64(t.Sec)*1e6 + float64(t.Usec) }
	return us(ru.Utime), us(ru.Stime)
}

// reportCPU reports the CPU per operation since (user0, sys0): cpu-us/op
// in all, and its user and system parts.
func reportCPU(b *testing.B, user0, sys0 float64) {
	user, sys := cpuNow(b)
	n := float64(b.N)
	b.ReportMetric((user-user0+sys-sys0)/n, "cpu-us/op")
	b.ReportMetric((user-user0)/n, "user-us/op")
	b.ReportMetric((sys-sys0)/n, "sys-us/op")
}

// BenchmarkMaildirCPU measures the CPU a Maildir delivery costs, as a
// Scheduler makes it (its own syncs: see Maildir): conc goroutines
// deliver b.N messages of size bytes, each for one recipient, into one
// maildir. The figure to compare is cpu-us/op, between builds run one
// after the other (the machine is shared: compare paired runs).
func BenchmarkMaildirCPU(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		raw := benchMessage(size)
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("size=%dKiB/conc=%d", size>>10, conc), func(b *testing.B) {
				benchMaildirCPU(b, &Maildir{Root: benchMailRoot(b)}, raw, conc)
			})
		}
	}
}

// benchKeepEnv names a directory the CPU benchmarks deliver under and
// leave their files in (removed by whoever runs them, later). On ext4
// without a journal, creating an inode skips every inode of its group
// deleted in the last minute or more (recently_deleted in the kernel, a
// scan per creation): measured, 55 % of the CPU of a run that followed the
// removal of an earlier run's files. Keeping the files makes paired runs
// comparable.
const benchKeepEnv = "MTAKIT_BENCH_KEEP_DIR"

// benchMailRoot returns the Root of a benchmark's Maildir: under a
// temporary directory, or under $MTAKIT_BENCH_KEEP_DIR and kept.
func benchMailRoot(b *testing.B) string {
	keep := os.Getenv(benchKeepEnv)
	if keep == "" {
		return filepath.Join(b.TempDir(), "mail")
	}
	dir, err := os.MkdirTemp(keep, "mail")
	if err != nil {
		b.Fatal(err)
	}
	return dir
}

func benchMaildirCPU(b *testing.B, md *Maildir, raw string, conc int) {
	tx := newTx("b1", "a@example.org", "john@example.com")
	deliver := func() bool {
		m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			b.Error(err)
			return false
		}
		d := &policy.Delivery{Tx: tx, Rcpts: tx.Rcpts, Route: policy.Route{Transport: "maildir"}, Message: m}
		if r := md.Deliver(context.Background(), d); r[0].Code != 250 {
			b.Error(r)
			return false
		}
		return true
	}
	if !deliver() { // the maildir made
		b.FailNow()
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	user0, sys0 := cpuNow(b)
	b.ResetTimer()
	runConc(b, conc, func(int) { deliver() })
	b.StopTimer()
	reportCPU(b, user0, sys0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkMaildirWays compares, in one build, the CPU per delivery of the
// ways a Maildir can name its files (see BenchmarkMaildirCPU): tmpfile (an
// O_TMPFILE file of new/ linked with linkat(2) AT_EMPTY_PATH, the default),
// tmpfile-proc (linked through /proc/self/fd, where AT_EMPTY_PATH is
// refused) and rename (created in tmp/, renamed into new/). Run it with
// -count: the ways alternate, and so pair up.
func BenchmarkMaildirWays(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		raw := benchMessage(size)
		for _, conc := range []int{1, 64} {
			for _, way := range []string{"tmpfile", "tmpfile-proc", "rename"} {
				b.Run(fmt.Sprintf("size=%dKiB/conc=%d/way=%s", size>>10, conc, way), func(b *testing.B) {
					md := &Maildir{Root: benchMailRoot(b)}
					md.st().noTmpfile.Store(way == "rename")
					md.st().procLink.Store(way == "tmpfile-proc")
					benchMaildirCPU(b, md, raw, conc)
					if way != "rename" && md.st().noTmpfile.Load() {
						b.Log("O_TMPFILE refused: measured the rename way")
					}
					if way == "tmpfile" && md.st().procLink.Load() {
						b.Log("AT_EMPTY_PATH refused: measured the /proc way")
					}
				})
			}
		}
	}
}
