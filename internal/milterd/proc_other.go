//go:build !unix

package milterd

import (
	"os"
	"syscall"
)

// groupAttr: the daemons are Unix programs; elsewhere the starting
// functions skip before starting anything.
func groupAttr() *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, _ bool) { _ = p.Kill() }
