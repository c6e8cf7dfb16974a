//go:build !unix

package main

import "testing"

// raiseNoFile: no RLIMIT_NOFILE to raise here; tests that need many files
// skip.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	t.Skipf("no RLIMIT_NOFILE on this system; the test needs %d open files", n)
}
