package auth

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeLargeMessage stores header followed by about mib MiB of body lines
// in a file and returns it as a message (closed with the test).
func writeLargeMessage(tb testing.TB, header string, mib int) *policy.Message {
	tb.Helper()
	f, err := os.Create(filepath.Join(tb.TempDir(), "big.eml"))
	require.NoError(tb, err)
	_, err = io.WriteString(f, header)
	require.NoError(tb, err)
	// Lines with runs of spaces and tabs and trailing white space, so the
	// relaxed canonicalization has work on every line.
	line := "0123456789 abcdef \t ghijkl  mnopqrstuvwxyz\t0123456789abcdef  \r\n"
	chunk := strings.Repeat(line, 32<<10/len(line)+1)
	for n := 0; n < mib<<20; n += len(chunk) {
		_, err = io.WriteString(f, chunk)
		require.NoError(tb, err)
	}
	st, err := f.Stat()
	require.NoError(tb, err)
	m, err := policy.NewMessage(f, st.Size(), f)
	require.NoError(tb, err)
	tb.Cleanup(func() { m.Close() })
	return m
}

// allocatedDuring returns the bytes the Go heap allocated while fn ran
// (all goroutines; the test runs alone).
func allocatedDuring(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestDKIMLargeMessageAllocations signs and verifies a large message and
// checks the heap allocations do not grow with its size: garbage made per
// byte shows up as RSS of the server (the GC lets the heap reach twice its
// live size before collecting).
func TestDKIMLargeMessageAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a large message")
	}
	const mib = largeMessageMiB
	signer := newTestSigner(t, "example.com", testRSA(t))
	srv := dkimZone(t, signer)
	m := writeLargeMessage(t, sampleMessage[:strings.Index(sampleMessage, "\r\n\r\n")+4], mib)
	tx := newTestTx("alice@example.com")

	var v policy.Verdict
	signAlloc := allocatedDuring(func() { v = SignDKIM(signer)(context.Background(), tx, m) })
	require.Equal(t, policy.Next(), v)
	verifyAlloc := allocatedDuring(func() {
		v = VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(context.Background(), tx, m)
	})
	require.Equal(t, policy.Next(), v)
	res, ok := DKIMResultsKey.Get(tx)
	require.True(t, ok)
	require.Len(t, res, 1)
	assert.Equal(t, authres.ResultValue(authres.ResultPass), res[0].Result, "%v", res[0].Reason)

	t.Logf("%d MiB message: signing allocated %s, verifying %s", mib, kib(signAlloc), kib(verifyAlloc))
	assert.Less(t, signAlloc, uint64(1<<20), "signing allocates per byte")
	assert.Less(t, verifyAlloc, uint64(1<<20), "verifying allocates per byte")
}

func kib(n uint64) string { return fmt.Sprintf("%d KiB", n>>10) }
