//go:build unix

package smtp

import (
	"syscall"
	"time"
)

// processCPU is the user and system CPU time this process has used:
// ns/op of a loopback benchmark is mostly waiting on round trips, while
// CPU per message is what bounds a loaded server.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
