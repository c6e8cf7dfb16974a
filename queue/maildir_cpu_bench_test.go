//go:build linux

package queue

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

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

// startCPU notes the CPU used so far; the function it returns reports the
// CPU per operation since (see reportCPU).
func startCPU(b *testing.B) func() {
	user0, sys0 := cpuNow(b)
	return func() { reportCPU(b, user0, sys0) }
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

// benchMailRoot returns the Root of a benchmark's Maildir (see benchDir).
func benchMailRoot(b *testing.B) string { return filepath.Join(benchDir(b), "mail") }

func benchMaildirCPU(b *testing.B, md *Maildir, raw string, conc int) {
	benchMaildirCPUSyncs(b, md, nil, raw, conc)
}

// benchMaildirCPUSyncs is benchMaildirCPU with the syncs of
// Maildir.deliver (nil: the Maildir's own, as Deliver).
func benchMaildirCPUSyncs(b *testing.B, md *Maildir, syncs *fsSyncs, raw string, conc int) {
	deliver := maildirDeliverer(b, md, syncs, raw)
	if !deliver() { // the maildir made
		b.FailNow()
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	newDir := filepath.Join(md.Root, "john", "new")
	rounds0 := md.st().dirs.begin(newDir)
	user0, sys0 := cpuNow(b)
	b.ResetTimer()
	runConc(b, conc, func(int) { deliver() })
	b.StopTimer()
	reportCPU(b, user0, sys0)
	if syncs == nil {
		b.ReportMetric(float64(md.st().dirs.begin(newDir)-rounds0)/float64(b.N), "dirsyncs/op")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkMaildirWays compares, in one build, the CPU per delivery of the
// ways a Maildir can name its files (see BenchmarkMaildirCPU): tmpfile (an
// O_TMPFILE file of new/ linked with linkat(2) AT_EMPTY_PATH, the default),
// tmpfile-proc (linked through /proc/self/fd, where AT_EMPTY_PATH is
// refused), rename (created in tmp/, renamed into new/) and syncfs (as
// rename, both syncs made by shared rounds of syncfs(2) of the filesystem:
// what deliveries did before issue 21). With load=dd another process
// writes to the filesystem meanwhile (see ddLoop): a syncfs(2) writes its
// data too, on our CPU. Run each way as its own process, rotating: the
// machine is shared, only paired runs compare.
func BenchmarkMaildirWays(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		raw := benchMessage(size)
		for _, conc := range []int{1, 64} {
			for _, load := range benchLoads {
				for _, way := range []string{"tmpfile", "tmpfile-proc", "rename", "syncfs"} {
					b.Run(fmt.Sprintf("load=%s/size=%dKiB/conc=%d/way=%s", load, size>>10, conc, way), func(b *testing.B) {
						md := &Maildir{Root: benchMailRoot(b)}
						md.st().noTmpfile.Store(way == "rename" || way == "syncfs")
						md.st().procLink.Store(way == "tmpfile-proc")
						var syncs *fsSyncs
						if way == "syncfs" {
							syncs = &fsSyncs{}
							defer syncs.close()
						}
						if load == "dd" {
							defer ddLoop(b, filepath.Dir(md.Root))()
						}
						benchMaildirCPUSyncs(b, md, syncs, raw, conc)
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
}

// BenchmarkMaildirSteps measures, one at a time and from one goroutine,
// the CPU of each step of a Maildir delivery of 4 KiB, to tell what each
// costs (cpu-us/op; the steps that sync also wait for the disk):
//
//   - open-close: open(2) of an O_TMPFILE file of new/ and close(2), through
//     an *os.File (what a delivery did) or the bare descriptor (tmpFile)
//   - link-empty, link-proc: those and linkat(2) into new/, of the file
//     itself (AT_EMPTY_PATH) or of /proc/self/fd/N
//   - create-rename: open(2) O_CREAT|O_EXCL in tmp/, close(2), rename(2)
//     into new/ (the classic way, for comparison)
//   - write: those, and the message written (writeLocal: the header, LF
//     line ends, through the pooled bufio.Writer), linked
//   - fdatasync: write, and fdatasync(2) of the file before its link
//   - fsync-dir: fdatasync, and an fsync(2) of new/ of its own (no group)
//   - writelocal: writeLocal alone, to a writer that discards (Go only)
func BenchmarkMaildirSteps(b *testing.B) {
	raw := benchMessage(4 << 10)
	tx := newTx("b1", "a@example.org", "john@example.com")
	for _, step := range []string{"open-close/os", "open-close/fd", "link-empty", "link-proc", "create-rename", "write", "fdatasync", "fsync-dir", "writelocal"} {
		b.Run("step="+step, func(b *testing.B) {
			root := benchMailRoot(b)
			md := &Maildir{Root: root}
			st := md.st()
			newDir, tmpDir := filepath.Join(root, "new"), filepath.Join(root, "tmp")
			for _, d := range []string{newDir, tmpDir} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					b.Fatal(err)
				}
			}
			msg := func() *policy.Delivery {
				m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err != nil {
					b.Fatal(err)
				}
				return &policy.Delivery{Tx: tx, Rcpts: tx.Rcpts, Message: m}
			}
			st.procLink.Store(step == "link-proc")
			b.ReportAllocs()
			user0, sys0 := cpuNow(b)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				switch step {
				case "open-close/os":
					f, err := openFile(newDir, os.O_WRONLY|unix.O_TMPFILE, 0o600)
					if err != nil {
						b.Fatal(err)
					}
					f.Close()
					continue
				case "writelocal":
					d := msg()
					if err := writeLocal(io.Discard, d, d.Rcpts[0], false, nil); err != nil {
						b.Fatal(err)
					}
					continue
				case "create-rename":
					tmp := maildirUnique(tmpDir, st.seq.Add(1))
					f, err := openFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
					if err != nil {
						b.Fatal(err)
					}
					f.Close()
					if err := rename(tmp, newDir+"/"+tmp[len(tmpDir)+1:]); err != nil {
						b.Fatal(err)
					}
					continue
				}
				f, err := openTmpfile(newDir)
				if err != nil {
					b.Fatal(err)
				}
				if step != "open-close/fd" {
					if step == "write" || step == "fdatasync" || step == "fsync-dir" {
						d := msg()
						if err := writeLocal(f, d, d.Rcpts[0], false, nil); err != nil {
							b.Fatal(err)
						}
						if step != "write" {
							if err := syncFileData(f); err != nil {
								b.Fatal(err)
							}
						}
					}
					if err := st.linkTmpfile(f, maildirUnique(newDir, st.seq.Add(1))); err != nil {
						b.Fatal(err)
					}
					if step == "fsync-dir" {
						if err := syncDirPath(newDir); err != nil {
							b.Fatal(err)
						}
					}
				}
				f.Close()
			}
			b.StopTimer()
			reportCPU(b, user0, sys0)
		})
	}
}
