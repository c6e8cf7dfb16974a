//go:build !unix && !windows

package queue

import (
	"errors"
	"os"
)

// lockFile: no file locks here (wasm, plan9): Open and Mbox refuse to work
// unlocked.
func lockFile(*os.File, bool) error { return errors.ErrUnsupported }

func unlockFile(*os.File) error { return errors.ErrUnsupported }
