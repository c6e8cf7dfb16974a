package journal

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasync makes the data written to f durable: fdatasync(2), which on a
// zero-filled segment (its blocks allocated, its size unchanged) writes
// no metadata. Never syncfs: its cost grows with every other writer on
// the filesystem.
func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
