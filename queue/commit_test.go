package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGroupCommitSharesSyncs(t *testing.T) {
	sp, err := Open(t.TempDir(), WithLogger(quietLogger()))
	require.NoError(t, err)
	defer sp.Close()
	// Hold the first sync until the other writers have all queued their
	// ops: they must then be made durable by one more sync, not 63.
	const n = 64
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) }) // never leave the committer stuck
	var inFirst atomic.Int64                        // ops in the first batch (1 file each)
	first := true
	sp.c.sync = func(root *os.File, files []string) error {
		if first {
			first = false
			inFirst.Store(int64(len(files)))
			<-release
		}
		return syncData(root, files)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- sp.Enqueue(context.Background(), newTx(fmt.Sprintf("g%d", i), "a@example.org", "b@example.com"), newMessage(t, testMsg))
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for inFirst.Load()+int64(len(sp.c.ops)) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // waiting for the writers, not timing anything
	}
	require.Equal(t, int64(n), inFirst.Load()+int64(len(sp.c.ops)), "writers queued behind the first batch")
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 2, sp.c.syncs, "64 enqueues, 2 syncs")
	l, err := sp.List(Working)
	require.NoError(t, err)
	assert.Len(t, l, n)
}

func TestEnqueueFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, WithLogger(quietLogger()))
	require.NoError(t, err)
	defer sp.Close()
	sp.c.sync = func(*os.File, []string) error { return errors.New("EIO") }
	err = sp.Enqueue(context.Background(), newTx("f1", "a@example.org", "b@example.com"), newMessage(t, testMsg))
	require.Error(t, err, "a failed sync is never acknowledged")
	for _, d := range []string{"tmp", Working} {
		ents, err := os.ReadDir(filepath.Join(dir, d))
		require.NoError(t, err)
		assert.Empty(t, ents, d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sp.c.sync = syncData
	// A cancelled context may stop the enqueue before its commit; then
	// nothing is left behind either.
	if err := sp.Enqueue(ctx, newTx("f2", "a@example.org", "b@example.com"), newMessage(t, testMsg)); err != nil {
		assert.ErrorIs(t, err, context.Canceled)
		_, err := sp.Show("f2")
		assert.ErrorIs(t, err, ErrNotFound)
	}
}
