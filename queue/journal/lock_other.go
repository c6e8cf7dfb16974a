//go:build !unix && !windows

package journal

import (
	"errors"
	"os"
)

// lockFile: no file locks here (wasm, plan9): Open refuses to work
// unlocked.
func lockFile(*os.File) error { return errors.ErrUnsupported }

func rename(from, to string) error { return os.Rename(from, to) }

func syncDir(d *os.File) error { return d.Sync() }
