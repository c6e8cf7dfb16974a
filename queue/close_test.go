package queue

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// openUnder returns the files this process has open under dir, and how
// many it has open in all (Linux: /proc/self/fd).
func openUnder(t *testing.T, dir string) (under []string, total int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory's own fd, gone by now
		}
		total++
		if target == dir || strings.HasPrefix(target, dir+string(filepath.Separator)) {
			under = append(under, target)
		}
	}
	return under, total
}

// TestCloseReleasesHandles: a spool that enqueued and had its scheduler
// deliver to a maildir keeps nothing open under its directory or the
// maildir's once closed (the Maildir keeps no directory open between its
// syncs), and the process has as many files open as before Open.
func TestCloseReleasesHandles(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts open files in /proc/self/fd")
	}
	dir := t.TempDir()
	md := &Maildir{Root: filepath.Join(dir, "mail")}
	run := func(name string) {
		h := newHarness(t, filepath.Join(dir, name), Config{
			Transports:   map[string]Transport{"maildir": md},
			DefaultRoute: policy.Route{Transport: "maildir"},
		})
		h.start()
		for _, id := range []string{"c1", "c2"} {
			require.NoError(t, h.sp.Enqueue(context.Background(), newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)))
			h.wait(id)
		}
		h.stop()
		require.NoError(t, h.sp.Close())
	}
	run("warm") // the runtime's own lazily opened files (the poller) are not ours
	_, before := openUnder(t, dir)
	run("spool")
	under, after := openUnder(t, dir)
	assert.Empty(t, under, "nothing left open under the spool or the maildir")
	assert.Equal(t, before, after, "open files before Open and after Close")
	ents, err := os.ReadDir(filepath.Join(dir, "mail", "b", "new"))
	require.NoError(t, err)
	assert.Len(t, ents, 4, "delivered")
	assert.Equal(t, uint64(4), md.st().dirs.begin(filepath.Join(dir, "mail", "b", "new")), "the scheduler's deliveries made the Maildir's own syncs, one after the other")
}

// TestSpoolsIndependent: two spools of one process (one filesystem) have
// their own sync rounds, and closing one leaves the other working.
func TestSpoolsIndependent(t *testing.T) {
	dir := t.TempDir()
	sp1, err := Open(filepath.Join(dir, "one"), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp1.Close()
	sp2, err := Open(filepath.Join(dir, "two"), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp2.Close()
	ctx := context.Background()

	rounds1 := sp1.syncs.groups.begin(sp1.c.key)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			assert.NoError(t, sp2.Enqueue(ctx, newTx("t"+string(rune('a'+i)), "a@example.org", "b@example.com"), newMessage(t, testMsg)))
		})
	}
	wg.Wait()
	if syncCoversRenames {
		assert.Equal(t, rounds1, sp1.syncs.groups.begin(sp1.c.key), "sp2's enqueues ran no round of sp1's")
		assert.NotZero(t, sp2.syncs.groups.begin(sp2.c.key), "sp2's ran rounds of its own")
	}

	require.NoError(t, sp1.Enqueue(ctx, newTx("x1", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	require.NoError(t, sp1.Close())
	require.NoError(t, sp2.Enqueue(ctx, newTx("x2", "a@example.org", "b@example.com"), newMessage(t, testMsg)), "sp2 works after sp1 closed")
	ids1, err := sp1.IDs(Working)
	require.NoError(t, err)
	assert.Equal(t, []string{"x1"}, ids1)
	ids2, err := sp2.IDs(Working)
	require.NoError(t, err)
	assert.Len(t, ids2, 9)

	// A Maildir delivering on its own keeps rounds of its own too.
	md := &Maildir{Root: filepath.Join(dir, "mail")}
	rep := md.Deliver(ctx, delivery(t, "a@example.org", policy.Route{}, testMsg, "john@example.com"))
	require.Len(t, rep, 1)
	assert.Equal(t, 250, rep[0].Code)
	assert.Equal(t, uint64(1), md.st().dirs.begin(filepath.Join(dir, "mail", "john", "new")), "the Maildir's own round")
}
