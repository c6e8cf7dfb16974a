//go:build linux

package milterd

import (
	"os"
	"syscall"
)

// groupAttr starts a daemon in a process group of its own, so that Stop
// reaches the workers it forks, and has the kernel send it SIGTERM if the
// test process dies without stopping it (a test binary killed by go
// test's -timeout runs no Cleanup).
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalGroup sends SIGTERM (or SIGKILL) to the process group led by p,
// which this package started.
func signalGroup(p *os.Process, kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = syscall.Kill(-p.Pid, sig)
}
