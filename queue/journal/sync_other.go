//go:build !linux

package journal

import "os"

// datasync makes the data written to f durable: fsync (F_FULLFSYNC on
// macOS, FlushFileBuffers on Windows) where there is no fdatasync.
func datasync(f *os.File) error { return f.Sync() }
