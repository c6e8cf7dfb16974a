package queue

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// syncData makes the written files durable. On Linux one syncfs(2) of the
// spool's filesystem covers the data and metadata of every file of the
// batch (and reports writeback errors since Linux 5.8), which is what makes
// group commit cheap: one journal commit for many messages.
func syncData(root *os.File, _ []string) error {
	for {
		err := unix.Syncfs(int(root.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// syncFile makes f (written, not yet closed) durable, with a syncfs(2) of
// its filesystem shared by every local delivery writing to it meanwhile.
func syncFile(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	return fileSyncs.do("fs:"+strconv.FormatUint(st.Dev, 10), func() error { return syncData(f, nil) })
}
