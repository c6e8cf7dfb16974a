package queue

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// The handles of fsSyncs: per filesystem, the handle every shared sync of
// it goes through (key "fs:<device>" -> *os.File, closed by fsSyncs.close).
// syncfs(2) reports a writeback error once per open file, and only an error
// that came after that file was opened: rounds made through the file of
// whoever leads each one could miss an error that another file would have
// reported. One handle per filesystem, opened before any write its rounds
// cover, reports each error once, to the round after it; doSince then
// fails everyone who began writing before that round ended.

// key returns the shared-sync key of f's filesystem, opening its handle
// (f's directory, or f if it is one) the first time.
func (y *fsSyncs) key(f *os.File) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", err
	}
	key := "fs:" + strconv.FormatUint(st.Dev, 10)
	if _, ok := y.handles.Load(key); ok {
		return key, nil
	}
	dir := f.Name()
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		dir = filepath.Dir(dir)
	}
	h, err := openFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", err
	}
	var hst unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &hst); err != nil || hst.Dev != st.Dev {
		h.Close()
		return "", fmt.Errorf("queue: %s moved to another filesystem", dir)
	}
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.closed {
		h.Close()
		return "", errClosed
	}
	if _, loaded := y.handles.LoadOrStore(key, h); loaded {
		h.Close()
	}
	return key, nil
}

// handle returns the handle of key (from key), nil once closed.
func (y *fsSyncs) handle(key string) *os.File {
	h, ok := y.handles.Load(key)
	if !ok {
		return nil
	}
	return h.(*os.File)
}

// shared returns once a round of key's shared syncs (one syncfs(2) of the
// filesystem through its handle) that began after the call has ended;
// since is as for doSince.
func (y *fsSyncs) shared(key string, since uint64) error {
	return y.groups.doSince(key, since, func() error {
		h := y.handle(key)
		if h == nil {
			return errClosed
		}
		return syncData(h, nil)
	})
}

// begin names the filesystem of f for file and notes the rounds of its
// shared syncs done before f is written.
func (y *fsSyncs) begin(f *os.File) (key string, since uint64, err error) {
	if key, err = y.key(f); err != nil {
		return "", 0, err
	}
	return key, y.groups.begin(key), nil
}

// file makes f (written, not yet closed) durable with a round of its
// filesystem's shared syncs: one syncfs(2) for every enqueue
// (committer.commitShared) and every Maildir delivery joining them (see
// Scheduler.syncs: benchmarks only) waiting meanwhile.
func (y *fsSyncs) file(_ *os.File, key string, since uint64) error { return y.shared(key, since) }

// renamed makes durable the renames into dir done before the call and
// after round since of key (groups.begin): a round of the shared syncs of
// dir's filesystem, since syncfs(2) covers renames, instead of an fsync(2)
// of dir of its own.
func (y *fsSyncs) renamed(key, _ string, since uint64) error { return y.shared(key, since) }

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

// syncDir makes the entries of directory d durable: fsync(2).
func syncDir(d *os.File) error { return d.Sync() }

// syncDirPath makes the entries of directory dir durable: open(2),
// fsync(2), close(2) of its bare descriptor (an *os.File would add an
// fcntl(2), allocations and a cleanup: measured 3.6 us of CPU per open and
// close, paid by every round of a Maildir's syncs of new/).
func syncDirPath(dir string) error {
	var (
		fd  int
		err error
	)
	for {
		fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	for {
		err = unix.Fsync(fd)
		if err != unix.EINTR {
			break
		}
	}
	unix.Close(fd)
	if err != nil {
		return &os.PathError{Op: "sync", Path: dir, Err: err}
	}
	return nil
}

// syncFileData makes the data of f (and what reading it back needs: its
// size, its blocks) durable: fdatasync(2), which unlike syncfs(2) writes
// nothing of other files, whoever else writes to the filesystem.
func syncFileData(f localFile) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// tmpFile is an unnamed file of a directory (O_TMPFILE) held by its bare
// descriptor: written, synced, linked and closed once, by one goroutine.
type tmpFile struct {
	fd  int
	dir string
}

// Write writes all of p (write(2) until done).
func (f *tmpFile) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := unix.Write(f.fd, p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &os.PathError{Op: "write", Path: f.dir, Err: err}
		}
		if k == 0 {
			return n, &os.PathError{Op: "write", Path: f.dir, Err: io.ErrShortWrite}
		}
		n += k
	}
	return n, nil
}

// Fd returns the descriptor.
func (f *tmpFile) Fd() uintptr { return uintptr(f.fd) }

// Name returns the directory the file is in.
func (f *tmpFile) Name() string { return f.dir }

// Close closes the descriptor; an unnamed file goes with it.
func (f *tmpFile) Close() error { return unix.Close(f.fd) }

// openTmpfile opens an unnamed file in directory dir (O_TMPFILE): nobody
// can see it until linkTmpfile names it, and a crash before that leaves
// nothing behind. errNoTmpfile (wrapped) says the filesystem or kernel has
// no O_TMPFILE. The caller closes it.
func openTmpfile(dir string) (*tmpFile, error) {
	for {
		fd, err := unix.Open(dir, unix.O_WRONLY|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return &tmpFile{fd: fd, dir: dir}, nil
		}
		switch err {
		case unix.EINTR:
			continue
		case unix.ENOENT, unix.ENOTDIR, unix.EACCES, unix.ENOSPC, unix.EDQUOT, unix.EMFILE, unix.ENFILE, unix.EROFS:
			return nil, &os.PathError{Op: "open", Path: dir, Err: err}
		}
		// EOPNOTSUPP (the filesystem), EISDIR or EINVAL (a kernel before
		// 3.11), and whatever else: the classic way.
		return nil, fmt.Errorf("%w: %s: %v", errNoTmpfile, dir, err)
	}
}

// linkTmpfile gives f (from openTmpfile) the name to: linkat(2) of f
// itself (AT_EMPTY_PATH), which a kernel allows to a caller with
// CAP_DAC_READ_SEARCH and, since Linux 6.10, to the opener of the file;
// where that is refused, linkat(2) of /proc/self/fd/N, the way linkat(2)
// documents for unprivileged callers, from then on (st.procLink). The
// /proc way costs a path walk through /proc per link (measured: a third of
// the linkat's CPU). The error is os.ErrExist (wrapped) when to exists,
// and errNoTmpfile when the link cannot be made at all (no /proc).
func (st *maildirState) linkTmpfile(f *tmpFile, to string) error {
	fd := f.fd
	if !st.procLink.Load() {
		err := st.linkEmpty(fd, to)
		switch err {
		case nil:
			return nil
		case unix.EEXIST:
			return &os.LinkError{Op: "link", Old: f.Name(), New: to, Err: err}
		case unix.ENOENT, unix.EPERM, unix.EINVAL, unix.EOPNOTSUPP:
			// Refused (ENOENT: no capability, or an older kernel), or
			// new/ is gone: the /proc way tells which.
			err = linkProcFd(f, fd, to)
			if err == nil {
				st.procLink.Store(true)
			}
			return err
		}
		return &os.LinkError{Op: "link", Old: f.Name(), New: to, Err: err}
	}
	return linkProcFd(f, fd, to)
}

// linkAtEmptyPath is linkat(2) of fd itself to to (AT_EMPTY_PATH).
func linkAtEmptyPath(fd int, to string) error {
	for {
		err := unix.Linkat(fd, "", unix.AT_FDCWD, to, unix.AT_EMPTY_PATH)
		if err != unix.EINTR {
			return err
		}
	}
}

// linkProcFd gives f (descriptor fd) the name to with linkat(2) of
// /proc/self/fd/N; see linkTmpfile.
func linkProcFd(f *tmpFile, fd int, to string) error {
	for {
		err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, to, unix.AT_SYMLINK_FOLLOW)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.ENOENT:
			if _, serr := os.Stat(filepath.Dir(to)); serr != nil {
				return &os.LinkError{Op: "link", Old: f.Name(), New: to, Err: err} // the maildir is gone
			}
			return fmt.Errorf("%w: link to %s: %v", errNoTmpfile, to, err) // no /proc
		case unix.EPERM, unix.EXDEV, unix.EOPNOTSUPP:
			return fmt.Errorf("%w: link to %s: %v", errNoTmpfile, to, err)
		}
		return &os.LinkError{Op: "link", Old: f.Name(), New: to, Err: err}
	}
}
