//go:build !unix && !windows

package queue

import "os"

// rename is os.Rename (see the Linux version).
func rename(from, to string) error { return os.Rename(from, to) }

// syncDir: os.File.Sync, where it is supported.
func syncDir(d *os.File) error { return d.Sync() }
