//go:build unix

package journal

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive lock on f without waiting, flock(2): the
// kernel drops it when the process dies.
func lockFile(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return errLockHeld
	}
	return err
}

// rename is os.Rename (made durable by a sync of the directory).
func rename(from, to string) error { return os.Rename(from, to) }

// syncDir makes the entries of directory d durable.
func syncDir(d *os.File) error { return d.Sync() }
