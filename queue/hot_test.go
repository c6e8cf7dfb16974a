package queue

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoadAfterEnqueue: the scheduler's Load of a message just enqueued
// takes the entry Enqueue kept open, and gets what the disk holds; any
// change of the entry in between (an admin's Move or Delete) drops it, so
// that Load then sees the change. At most maxHot entries are kept, and
// Close closes them.
func TestLoadAfterEnqueue(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	ctx := context.Background()
	for _, id := range []string{"h1", "h2", "h3"} {
		require.NoError(t, sp.Enqueue(ctx, newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	hot := func() int {
		sp.hotMu.Lock()
		defer sp.hotMu.Unlock()
		return len(sp.hot)
	}
	require.Equal(t, 3, hot())

	q, env, m, err := sp.Load("h1")
	require.NoError(t, err)
	assert.Equal(t, Working, q)
	assert.Equal(t, "h1", env.ID)
	raw, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	assert.Equal(t, testMsg, string(raw))
	disk, err := sp.readEnvelope(Working, "h1")
	require.NoError(t, err)
	assert.Equal(t, disk.end, env.end, "the kept envelope is the stored one")
	assert.Equal(t, disk.Size, env.Size)
	require.NoError(t, m.Close())
	assert.Equal(t, 2, hot(), "taken by Load")

	require.NoError(t, sp.Move(ctx, "h2", Deferred))
	q, _, m, err = sp.Load("h2")
	require.NoError(t, err)
	assert.Equal(t, Deferred, q, "moved after Enqueue")
	m.Close()
	require.NoError(t, sp.Delete(ctx, "h3"))
	_, _, _, err = sp.Load("h3")
	assert.ErrorIs(t, err, ErrNotFound, "deleted after Enqueue")
	assert.Zero(t, hot())

	for i := range maxHot + 5 {
		require.NoError(t, sp.Enqueue(ctx, newTx(fmt.Sprintf("b%d", i), "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	assert.Equal(t, maxHot, hot(), "bounded")
	q, _, m, err = sp.Load(fmt.Sprintf("b%d", maxHot+4))
	require.NoError(t, err, "one not kept is read from disk")
	assert.Equal(t, Working, q)
	m.Close()
	require.NoError(t, sp.Close())
	assert.Zero(t, hot(), "closed with the spool")
}
