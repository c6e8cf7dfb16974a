package queue

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncCoversCreates: syncfs also makes the creation of the files durable
// (their directory entries are in the journal it commits), so the directory
// a file was created in needs no fsync of its own; a rename after the sync
// still does.
const syncCoversCreates = true

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
