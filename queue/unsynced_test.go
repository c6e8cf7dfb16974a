package queue

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
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
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
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
	sp, err = Open(dir, SpoolConfig{Logger: quietLogger()})
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

// TestEnqueuePublishedBeforeSync: on Linux an entry is renamed into its
// queue before the sync that makes it durable, and nobody sees it there
// (scheduler listing, Load, admin API) until that sync succeeded; when it
// fails the entry is gone again.
func TestEnqueuePublishedBeforeSync(t *testing.T) {
	if !syncCoversRenames {
		t.Skip("entries are published before their sync only where syncfs(2) covers renames (Linux)")
	}
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	ctx := context.Background()

	for _, fail := range []bool{false, true} {
		id := "ok"
		if fail {
			id = "failed"
		}
		inSync, release := make(chan struct{}), make(chan struct{})
		sp.c.sync = func(root *os.File, files []string) error {
			close(inSync)
			<-release
			if fail {
				return errors.New("EIO")
			}
			return syncData(root, files)
		}
		done := make(chan error, 1)
		go func() { done <- sp.Enqueue(ctx, newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)) }()
		<-inSync
		_, err := os.Stat(filepath.Join(dir, Working, id+entrySuffix))
		require.NoError(t, err, "published before the sync")
		ids, err := sp.IDs(Working)
		require.NoError(t, err)
		assert.NotContains(t, ids, id, "listed before its commit")
		_, _, _, err = sp.Load(id)
		assert.ErrorIs(t, err, ErrNotFound)
		assert.ErrorIs(t, sp.Delete(ctx, id), ErrNotFound)
		close(release)
		err = <-done
		ids, lerr := sp.IDs(Working)
		require.NoError(t, lerr)
		if fail {
			assert.Error(t, err)
			assert.NotContains(t, ids, id)
			_, err = os.Stat(filepath.Join(dir, Working, id+entrySuffix))
			assert.ErrorIs(t, err, os.ErrNotExist, "a failed commit leaves nothing in the queue")
		} else {
			require.NoError(t, err)
			assert.Contains(t, ids, id)
		}
	}
	sp.c.sync = syncData
}

// TestSaveThroughLoadedHandle: while the message Load returned is open,
// changes of its envelope go through the entry file Load opened, wherever
// renames took it; after a rule replaced the body (a new entry file), and
// after the message is closed, they go to the entry's current file.
func TestSaveThroughLoadedHandle(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	ctx := context.Background()
	require.NoError(t, sp.Enqueue(ctx, newTx("h1", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	reload := func() (string, *Envelope, string) {
		t.Helper()
		q, env, m, err := sp.Load("h1")
		require.NoError(t, err)
		defer m.Close()
		raw, err := io.ReadAll(m.Reader())
		require.NoError(t, err)
		return q, env, string(raw)
	}

	_, env, m, err := sp.Load("h1")
	require.NoError(t, err)
	require.NotNil(t, env.f, "Load keeps the entry open for updates")
	env.Attempts = 1
	require.NoError(t, sp.SaveUnsynced(ctx, env, Working, Deliver, nil))
	env.Attempts = 2
	require.NoError(t, sp.SaveUnsynced(ctx, env, Deliver, Deliver, nil), "appended through the handle after the rename")
	q, got, _ := reload()
	assert.Equal(t, Deliver, q)
	assert.Equal(t, 2, got.Attempts)

	// A replaced body is a new file: the handle of the old one is dropped.
	replaced := newMessage(t, "Subject: replaced\r\n\r\nnew body\r\n")
	require.NoError(t, sp.Save(ctx, env, Deliver, Deliver, replaced))
	assert.Nil(t, env.f)
	env.Attempts = 3
	require.NoError(t, sp.SaveUnsynced(ctx, env, Deliver, Deferred, nil))
	q, got, raw := reload()
	assert.Equal(t, Deferred, q)
	assert.Equal(t, 3, got.Attempts)
	assert.Equal(t, "Subject: replaced\r\n\r\nnew body\r\n", raw)
	m.Close()

	// Closing the message drops the handle; later changes reopen the entry.
	_, env, m, err = sp.Load("h1")
	require.NoError(t, err)
	require.NoError(t, m.Close())
	assert.Nil(t, env.f)
	env.Attempts = 4
	require.NoError(t, sp.Save(ctx, env, Deferred, Deliver, nil))
	q, got, _ = reload()
	assert.Equal(t, Deliver, q)
	assert.Equal(t, 4, got.Attempts)
}
