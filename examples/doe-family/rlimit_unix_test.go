//go:build unix

package main

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// raiseNoFile makes sure this process (and the server it starts, which
// inherits the limit) may open n files.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if uint64(lim.Cur) >= n {
		return
	}
	setLimit(&lim.Cur, min(n, uint64(lim.Max)))
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	if uint64(lim.Cur) < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d files the test needs", lim.Max, n)
	}
}

// setLimit sets an Rlimit field, uint64 on Linux and int64 on the BSDs.
func setLimit[T int64 | uint64](field *T, v uint64) { *field = T(v) }
