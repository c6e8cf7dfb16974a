package queue

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSaveUnsynced checks what the scheduler relies on when it records an
// attempt without waiting: the change is there at once (and for a spool
// opened again, as after a crash of the process), and no sync was waited
// for; a later durable change of the entry carries it.
func TestSaveUnsynced(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, WithLogger(quietLogger()))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, sp.Enqueue(ctx, newTx("m1", "a@example.org", "b@example.com"), newMessage(t, testMsg)))

	_, env, m, err := sp.Load("m1")
	require.NoError(t, err)
	m.Close()
	next := time.Now().Add(time.Hour).Truncate(time.Second)
	env.Attempts, env.NextAttempt = 1, next
	syncs := sp.cs.syncs
	require.NoError(t, sp.SaveUnsynced(ctx, env, Working, Deliver, nil))
	assert.Equal(t, syncs, sp.cs.syncs, "SaveUnsynced waited for a sync")

	q, got, m, err := sp.Load("m1")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, Deliver, q)
	assert.Equal(t, 1, got.Attempts)
	require.NoError(t, sp.Close())

	// A new process finds the attempt recorded.
	sp, err = Open(dir, WithLogger(quietLogger()))
	require.NoError(t, err)
	defer sp.Close()
	q, got, m, err = sp.Load("m1")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, Deliver, q)
	assert.Equal(t, 1, got.Attempts)
	assert.True(t, got.NextAttempt.Equal(next), "next attempt %v, want %v", got.NextAttempt, next)

	// The next durable change syncs, and keeps what was recorded.
	got.LastError = "451 4.0.0 later"
	syncs = sp.cs.syncs
	require.NoError(t, sp.Save(ctx, got, Deliver, Deferred, nil))
	assert.Greater(t, sp.cs.syncs, syncs)
	q, got, m, err = sp.Load("m1")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, Deferred, q)
	assert.Equal(t, 1, got.Attempts)
	assert.Equal(t, "451 4.0.0 later", got.LastError)
}
