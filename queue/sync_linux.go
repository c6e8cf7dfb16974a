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

// syncCoversRenames: syncData's syncfs(2) makes durable the renames done
// before it, with the data: an entry can be published (renamed into its
// queue) before the sync, which spares a directory fsync and its device
// cache flush per batch.
const syncCoversRenames = true

// syncBegin names the filesystem of f for syncFile and notes the rounds of
// its shared syncs done before f is written.
func syncBegin(f *os.File) (key string, since uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", 0, err
	}
	key = "fs:" + strconv.FormatUint(st.Dev, 10)
	return key, fileSyncs.begin(key), nil
}

// syncFile makes f (written, not yet closed) durable, with a syncfs(2) of
// its filesystem shared by every local delivery writing to it meanwhile.
func syncFile(f *os.File, key string, since uint64) error {
	return fileSyncs.doSince(key, since, func() error { return syncData(f, nil) })
}

// openFile is os.OpenFile for the spool's regular files and directories
// without the poller registration os.OpenFile attempts on Linux (four
// fcntl(2) and an epoll_ctl(2) that fails for regular files): measured at
// 18 of the ~90 system calls a message cost from accept to delivery.
func openFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	for {
		fd, err := unix.Open(name, flag|unix.O_CLOEXEC, uint32(perm.Perm()))
		if err == nil {
			return os.NewFile(uintptr(fd), name), nil
		}
		if err != unix.EINTR {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
	}
}

// rename is os.Rename without the lstat(2) of the target os.Rename makes
// first (to refuse replacing a directory, which the spool never asks).
func rename(from, to string) error {
	if err := unix.Rename(from, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}
