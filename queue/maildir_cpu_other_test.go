//go:build !linux

package queue

import "testing"

// startCPU reports nothing without getrusage(2) (see the Linux version).
func startCPU(*testing.B) func() { return func() {} }
