//go:build !linux

package queue

import "os"

// syncData fsyncs each written file (no syncfs(2) outside Linux).
func syncData(_ *os.File, files []string) error {
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// begin has nothing to note without syncfs(2).
func (y *fsSyncs) begin(*os.File) (string, uint64, error) { return "", 0, nil }

// file makes f (written, not yet closed) durable.
func (y *fsSyncs) file(f *os.File, _ string, _ uint64) error { return f.Sync() }

// renamed makes durable the renames into dir done before the call: an
// fsync(2) of dir, shared by the deliveries renaming into it meanwhile.
func (y *fsSyncs) renamed(_, dir string, _ uint64) error {
	return y.groups.do(dir, func() error { return syncDirPath(dir) })
}

// key: shared rounds need syncfs(2); without it the committer runs ops
// itself.
func (y *fsSyncs) key(*os.File) (string, error) { return "", nil }

// handle is never called without syncfs(2) (key gives no key).
func (y *fsSyncs) handle(string) *os.File { return nil }

// openFile is os.OpenFile (see the Linux version).
func openFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

// syncCoversRenames: fsync(2) of a file does not cover its directory.
const syncCoversRenames = false

// syncFileData makes f's data durable: fsync(2) (fdatasync(2) is not
// everywhere). Without O_TMPFILE, every localFile is an *os.File.
func syncFileData(f localFile) error { return f.(*os.File).Sync() }

// tmpFile is Linux's (O_TMPFILE).
type tmpFile struct{ os.File }

// openTmpfile: O_TMPFILE is Linux's.
func openTmpfile(string) (*tmpFile, error) { return nil, errNoTmpfile }

// linkTmpfile is never called without openTmpfile.
func (st *maildirState) linkTmpfile(*tmpFile, string) error { return errNoTmpfile }

// linkAtEmptyPath: linkat(2) with AT_EMPTY_PATH is Linux's.
func linkAtEmptyPath(int, string) error { return errNoTmpfile }

// syncDirPath makes the entries of directory dir durable (see syncDir).
func syncDirPath(dir string) error {
	f, err := openFile(dir, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return syncDir(f)
}
