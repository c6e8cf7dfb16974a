//go:build unix && !linux

package milterd

import (
	"os"
	"syscall"
)

// groupAttr starts a daemon in a process group of its own, so that Stop
// reaches the workers it forks.
func groupAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// signalGroup sends SIGTERM (or SIGKILL) to the process group led by p,
// which this package started.
func signalGroup(p *os.Process, kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = syscall.Kill(-p.Pid, sig)
}
