package queue

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func requireRecycling(t *testing.T) {
	t.Helper()
	if !recycleEntries {
		t.Skip("entry files are recycled only on Linux (syncfs)")
	}
}

// body returns the message of id as the spool gives it back.
func loadBody(t *testing.T, sp *Spool, id string) string {
	t.Helper()
	_, _, m, err := sp.Load(id)
	require.NoError(t, err)
	defer m.Close()
	b, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	return string(b)
}

func fileOf(t *testing.T, sp *Spool, q, id string) os.FileInfo {
	t.Helper()
	dir, err := sp.queueDir(q)
	require.NoError(t, err)
	fi, err := os.Stat(entryPath(dir, id))
	require.NoError(t, err)
	return fi
}

func TestRecycledEntryHoldsOnlyTheNewMessage(t *testing.T) {
	requireRecycling(t)
	ctx := context.Background()
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()

	long := testMsg + strings.Repeat("a long body line, longer than the next message\r\n", 200)
	require.NoError(t, sp.Enqueue(ctx, newTx("old", "a@example.org", "b@example.com"), newMessage(t, long)))
	oldFile := fileOf(t, sp, Working, "old")
	q, env, m, err := sp.Load("old")
	require.NoError(t, err)
	m.Close()
	require.NoError(t, sp.Remove(ctx, q, env.ID))
	assert.Equal(t, 1, sp.rec.size(), "the delivered entry's file waits in free/")
	_, _, _, err = sp.Load("old")
	assert.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, sp.Enqueue(ctx, newTx("new", "c@example.org", "d@example.com"), newMessage(t, testMsg)))
	newFile := fileOf(t, sp, Working, "new")
	assert.True(t, os.SameFile(oldFile, newFile), "the new entry is written over the free file")
	assert.Equal(t, 0, sp.rec.size())
	assert.Equal(t, testMsg, loadBody(t, sp, "new"))
	_, env, m, err = sp.Load("new")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, "c@example.org", env.From.Address().String())
	assert.Equal(t, env.end, newFile.Size(), "nothing of the old entry is left after the new one")

	// The recycled entry takes appended records like a new one.
	env.LastError = "451 4.0.0 try later"
	require.NoError(t, sp.Save(ctx, env, Working, Deferred, nil))
	_, env, m, err = sp.Load("new")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, "451 4.0.0 try later", env.LastError)
}

func TestRecycleWaitsForReaders(t *testing.T) {
	requireRecycling(t)
	ctx := context.Background()
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()

	first := strings.Replace(testMsg, "Hello world.", "The first message, still being read.", 1)
	require.NoError(t, sp.Enqueue(ctx, newTx("m1", "a@example.org", "b@example.com"), newMessage(t, first)))
	q, env, held, err := sp.Load("m1")
	require.NoError(t, err)
	require.NoError(t, sp.Remove(ctx, q, env.ID))
	assert.Equal(t, 0, sp.rec.size(), "a file still read is not offered for reuse")

	// A new entry gets a new file: the held message reads what it held.
	require.NoError(t, sp.Enqueue(ctx, newTx("m2", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	b, err := io.ReadAll(held.Reader())
	require.NoError(t, err)
	assert.Equal(t, first, string(b))
	require.NoError(t, held.Close())
	assert.Equal(t, 1, sp.rec.size(), "reusable once its last reader is done")
	assert.Equal(t, testMsg, loadBody(t, sp, "m2"))
}

func TestRecycleLimits(t *testing.T) {
	requireRecycling(t)
	ctx := context.Background()
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)

	big := testMsg + strings.Repeat("x", maxRecycledSize)
	require.NoError(t, sp.Enqueue(ctx, newTx("big", "a@example.org", "b@example.com"), newMessage(t, big)))
	q, env, m, err := sp.Load("big")
	require.NoError(t, err)
	m.Close()
	require.NoError(t, sp.Remove(ctx, q, env.ID))
	assert.Equal(t, 0, sp.rec.size(), "a large file is unlinked, not kept")

	require.NoError(t, sp.Enqueue(ctx, newTx("small", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	q, env, m, err = sp.Load("small")
	require.NoError(t, err)
	m.Close()
	require.NoError(t, sp.Remove(ctx, q, env.ID))
	require.NoError(t, sp.Close())
	ents, err := os.ReadDir(filepath.Join(dir, freeDir))
	require.NoError(t, err)
	assert.Len(t, ents, 1)

	// A new process takes in free/ (and drops what is not an entry file).
	require.NoError(t, os.WriteFile(filepath.Join(dir, freeDir, "stray"), []byte("x"), 0o600))
	sp, err = Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	assert.Equal(t, 1, sp.rec.size())
	_, err = os.Stat(filepath.Join(dir, freeDir, "stray"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	// The pool is bounded, in files and in bytes.
	sp.rec.maxFiles = 20
	cycle := func(n int, prefix string) {
		for i := 0; i < n; i++ {
			require.NoError(t, sp.Enqueue(ctx, newTx(fmt.Sprintf("%s%03d", prefix, i), "a@example.org", "b@example.com"), newMessage(t, testMsg)))
		}
		for i := 0; i < n; i++ {
			q, env, m, err := sp.Load(fmt.Sprintf("%s%03d", prefix, i))
			require.NoError(t, err)
			m.Close()
			require.NoError(t, sp.Remove(ctx, q, env.ID))
		}
	}
	cycle(30, "n")
	assert.Equal(t, 20, sp.rec.size())
	ents, err = os.ReadDir(filepath.Join(dir, freeDir))
	require.NoError(t, err)
	assert.Len(t, ents, 20)

	sp.rec.maxBytes = sp.rec.bytes / 2
	cycle(30, "b")
	assert.LessOrEqual(t, sp.rec.bytes, sp.rec.maxBytes)
	assert.Less(t, sp.rec.size(), 20)
	ents, err = os.ReadDir(filepath.Join(dir, freeDir))
	require.NoError(t, err)
	assert.Len(t, ents, sp.rec.size())
}

// TestRecycleFreeDirBroken: when free/ cannot take a delivered entry, the
// entry is unlinked all the same (left in its queue, its message would be
// delivered again).
func TestRecycleFreeDirBroken(t *testing.T) {
	requireRecycling(t)
	ctx := context.Background()
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	require.NoError(t, sp.Enqueue(ctx, newTx("m1", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	free := filepath.Join(dir, freeDir)
	require.NoError(t, os.RemoveAll(free))
	require.NoError(t, os.WriteFile(free, []byte("not a directory"), 0o600))

	q, env, m, err := sp.Load("m1")
	require.NoError(t, err)
	m.Close()
	require.NoError(t, sp.Remove(ctx, q, env.ID))
	_, _, _, err = sp.Load("m1")
	assert.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, 0, sp.rec.size())
}
