//go:build !linux && !windows

package queue

import "os"

// rename is os.Rename (see the Linux version).
func rename(from, to string) error { return os.Rename(from, to) }

// syncDir makes the entries of directory d durable: fsync(2) where there
// is one.
func syncDir(d *os.File) error { return d.Sync() }
