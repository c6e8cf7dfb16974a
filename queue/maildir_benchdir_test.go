package queue

import (
	"os"
	"testing"
)

// benchKeepEnv names a directory the storage benchmarks write under and
// leave their files in (removed by whoever runs them, later). On ext4
// without a journal, creating an inode skips every inode of its group
// deleted in the last minute or more (recently_deleted in the kernel, a
// scan per creation): measured, 55 % of the CPU of a run that followed the
// removal of an earlier run's files. Keeping the files makes paired runs
// comparable.
const benchKeepEnv = "MTAKIT_BENCH_KEEP_DIR"

// benchDir returns a directory for a benchmark's files: a temporary one,
// or a new one under $MTAKIT_BENCH_KEEP_DIR, kept.
func benchDir(b *testing.B) string {
	keep := os.Getenv(benchKeepEnv)
	if keep == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(keep, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return dir
}
