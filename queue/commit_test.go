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

	"github.com/mtakit/mtakit/policy"
)

func TestGroupCommitSharesSyncs(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
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
	for inFirst.Load()+int64(sp.c.queued()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // waiting for the writers, not timing anything
	}
	require.Equal(t, int64(n), inFirst.Load()+int64(sp.c.queued()), "writers queued behind the first batch")
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

// queued counts the ops waiting for c: in its channel, or for a round of
// the shared syncs.
func (c *committer) queued() int {
	n := len(c.ops)
	if c.key != "" {
		c.fs.groups.mu.Lock()
		n += c.fs.groups.group(c.key).waiting
		c.fs.groups.mu.Unlock()
	}
	return n
}

func TestEnqueueFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
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

// TestSyncFailureFailsWritesBegunBefore: a filesystem sync reports a
// writeback error once per handle, so the sync that fails may be reporting
// the error of a file another batch was writing meanwhile, whose own sync
// then succeeds. Every op whose writes began before a failed sync fails too;
// one begun after it is committed.
func TestSyncFailureFailsWritesBegunBefore(t *testing.T) {
	dir := t.TempDir()
	c, err := newCommitter(dir, false, &fsSyncs{})
	require.NoError(t, err)
	defer c.close()
	fail := true
	c.sync = func(root *os.File, files []string) error {
		if fail {
			fail = false
			return errors.New("EIO")
		}
		return syncData(root, files)
	}
	write := func(name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(name), 0o640))
		return p
	}
	ctx := context.Background()

	// B starts writing, then A's batch fails its sync.
	sinceB := c.begin()
	b := write("b")
	sinceA := c.begin()
	a := write("a")
	require.Error(t, c.commit(ctx, &op{files: []string{a}, since: sinceA}), "the failed sync itself")
	require.ErrorIs(t, c.commit(ctx, &op{files: []string{b}, since: sinceB}), errEarlierSync,
		"written while a sync failed: never acknowledged")

	// Writes begun after the failure are committed, and ops without files
	// (renames, removals) are not concerned.
	sinceC := c.begin()
	cfile := write("c")
	require.NoError(t, c.commit(ctx, &op{files: []string{cfile}, since: sinceC}))
	require.NoError(t, c.commit(ctx, &op{removes: []string{b}}))
}

// TestEnqueueAndDeliveryShareSyncs: where syncfs(2) covers the renames,
// enqueues and maildir deliveries on one filesystem share its sync rounds
// (the deliveries of a Scheduler on the spool: Maildir.deliver with the
// spool's syncs, as Scheduler.transport calls it).
// With an enqueue's round held, a second enqueue and a delivery (its data)
// wait for the next round and share it; the delivery's rename then takes
// one more: three rounds, where separate syncs would take four.
func TestEnqueueAndDeliveryShareSyncs(t *testing.T) {
	if !syncCoversRenames {
		t.Skip("shared sync rounds need syncfs(2) (Linux)")
	}
	dir := t.TempDir()
	sp, err := Open(filepath.Join(dir, "spool"), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	rounds := func() uint64 { return sp.syncs.groups.begin(sp.c.key) }
	before := rounds()
	inSync, release := make(chan struct{}), make(chan struct{})
	first := true
	sp.c.sync = func(root *os.File, files []string) error {
		if first {
			first = false
			close(inSync)
			<-release
		}
		return syncData(root, files)
	}
	ctx := context.Background()
	errs := make(chan error, 2)
	go func() { errs <- sp.Enqueue(ctx, newTx("s1", "a@example.org", "b@example.com"), newMessage(t, testMsg)) }()
	<-inSync
	go func() { errs <- sp.Enqueue(ctx, newTx("s2", "a@example.org", "b@example.com"), newMessage(t, testMsg)) }()
	md := &Maildir{Root: filepath.Join(dir, "mail")}
	delivered := make(chan []policy.Reply, 1)
	d := delivery(t, "a@example.org", policy.Route{}, testMsg, "john@example.com")
	go func() { delivered <- md.deliver(ctx, d, &sp.syncs) }()
	deadline := time.Now().Add(10 * time.Second)
	for sp.c.queued() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // waiting for the two writers, not timing anything
	}
	require.Equal(t, 2, sp.c.queued(), "the second enqueue and the delivery wait for the held round")
	close(release)
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	rep := <-delivered
	require.Len(t, rep, 1)
	assert.Equal(t, 250, rep[0].Code)
	assert.Equal(t, uint64(3), rounds()-before, "rounds: held enqueue; second enqueue with the delivery's data; the delivery's rename")
	ents, err := os.ReadDir(filepath.Join(dir, "mail", "john", "new"))
	require.NoError(t, err)
	assert.Len(t, ents, 1)
	ids, err := sp.IDs(Working)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"s1", "s2"}, ids)
}
