package journal

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
)

const testMsg = "From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n\r\nHello world.\r\n"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openT(t testing.TB, dir string, segSize int64) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func newTx(id string, rcpts ...string) *policy.Transaction {
	tx := policy.NewTransaction(&policy.Conn{ID: "c1", Helo: "client.example.org", ESMTP: true}, id)
	tx.From = policy.MustParseAddress("a@example.org")
	if len(rcpts) == 0 {
		rcpts = []string{"b@example.com"}
	}
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return tx
}

func enqueue(t testing.TB, s *Store, id, raw string) {
	t.Helper()
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	require.NoError(t, err)
	require.NoError(t, s.Enqueue(context.Background(), newTx(id), m))
}

// content returns the queue and message of id ("" when it is gone).
func content(t testing.TB, s *Store, id string) (string, *queue.Envelope, string) {
	t.Helper()
	q, env, m, err := s.Load(id)
	if err != nil {
		require.ErrorIs(t, err, queue.ErrNotFound)
		return "", nil, ""
	}
	defer m.Close()
	b, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	return q, env, string(b)
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if _, ok := parseSegName(e.Name()); ok {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestReopen: every kind of change is read back after a restart.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, Config{Dir: dir, Logger: quietLogger()})
	require.NoError(t, err)
	for i := range 5 {
		enqueue(t, s, fmt.Sprintf("m%d", i), testMsg+strings.Repeat("x", i*100)+"\r\n")
	}
	// m0: moved to deferred with a header edit.
	q, env, m, err := s.Load("m0")
	require.NoError(t, err)
	m.Header.Add("DKIM-Signature", "v=1; d=example.org")
	env.Attempts, env.PostQDone = 1, true
	require.NoError(t, s.Save(ctx, env, q, queue.Deferred, m))
	m.Close()
	// m1: body replaced, to hold.
	q, env, m, err = s.Load("m1")
	require.NoError(t, err)
	repl := "Subject: replaced\r\n\r\nnew body\r\n"
	require.NoError(t, m.Replace(strings.NewReader(repl), int64(len(repl)), nil))
	require.NoError(t, s.Save(ctx, env, q, queue.Hold, m))
	m.Close()
	// m2: removed. m3: an attempt record, unsynced.
	require.NoError(t, s.Remove(ctx, queue.Working, "m2"))
	q, env, m, err = s.Load("m3")
	require.NoError(t, err)
	env.InFlight = true
	require.NoError(t, s.SaveUnsynced(ctx, env, q, queue.Deliver, nil))
	m.Close()
	// m4 quarantined by an Add.
	require.NoError(t, s.Add(ctx, mustEnv(t, "m5"), queue.QuarantinePrefix+"virus", func(w io.Writer) (int64, error) {
		n, err := io.WriteString(w, testMsg)
		return int64(n), err
	}))
	require.NoError(t, s.Close())

	s = openT(t, dir, 0)
	q, env, got := content(t, s, "m0")
	assert.Equal(t, queue.Deferred, q)
	assert.Equal(t, 1, env.Attempts)
	assert.Contains(t, got, "DKIM-Signature: v=1; d=example.org\r\n")
	assert.True(t, strings.HasSuffix(got, "\r\n\r\nHello world.\r\n\r\n"), "%q", got)
	q, _, got = content(t, s, "m1")
	assert.Equal(t, queue.Hold, q)
	assert.Equal(t, repl, got)
	q, _, _ = content(t, s, "m2")
	assert.Equal(t, "", q, "removed")
	q, env, _ = content(t, s, "m3")
	assert.Equal(t, queue.Deliver, q)
	assert.True(t, env.InFlight)
	q, _, got = content(t, s, "m4")
	assert.Equal(t, queue.Working, q)
	assert.Equal(t, testMsg+strings.Repeat("x", 400)+"\r\n", got)
	q, _, _ = content(t, s, "m5")
	assert.Equal(t, queue.QuarantinePrefix+"virus", q)
	ids, err := s.IDs(queue.Working)
	require.NoError(t, err)
	assert.Equal(t, []string{"m4"}, ids)
	// New records go after the old ones: an ID removed can come back.
	enqueue(t, s, "m2", testMsg)
	q, _, _ = content(t, s, "m2")
	assert.Equal(t, queue.Working, q)
}

func mustEnv(t testing.TB, id string) *queue.Envelope {
	env, err := queue.NewEnvelope(newTx(id), time.Now())
	require.NoError(t, err)
	return env
}

// TestTornTail: a last record cut short or damaged (a crash during its
// write) is ignored at Open; the records before it are intact, and the
// store goes on in a new segment.
func TestTornTail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string, off, size int64)
	}{
		{"truncated", func(t *testing.T, path string, off, size int64) {
			require.NoError(t, os.Truncate(path, off+size/2))
		}},
		{"zeroed tail", func(t *testing.T, path string, off, size int64) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			_, err = f.WriteAt(make([]byte, size/2), off+size/2)
			require.NoError(t, err)
		}},
		{"flipped body byte", func(t *testing.T, path string, off, size int64) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			b := make([]byte, 1)
			_, err = f.ReadAt(b, off+size-3)
			require.NoError(t, err)
			b[0] ^= 0x40
			_, err = f.WriteAt(b, off+size-3)
			require.NoError(t, err)
		}},
		{"no header", func(t *testing.T, path string, off, size int64) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			_, err = f.WriteAt(make([]byte, headLen), off)
			require.NoError(t, err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(context.Background(), Config{Dir: dir, Logger: quietLogger()})
			require.NoError(t, err)
			enqueue(t, s, "a", testMsg)
			enqueue(t, s, "b", testMsg+"second\r\n")
			enqueue(t, s, "c", testMsg+strings.Repeat("third\r\n", 100))
			s.mu.Lock()
			e := s.entries["c"]
			path, off := e.envSeg.path, e.seq
			_ = off
			recOff := e.body.off + e.body.n // the end of c's record
			start := e.envOff - headLen - int64(4+len("c")+len(queue.Working))
			s.mu.Unlock()
			require.NoError(t, s.Close())
			tc.damage(t, path, start, recOff-start)

			s = openT(t, dir, 0)
			_, _, got := content(t, s, "a")
			assert.Equal(t, testMsg, got)
			_, _, got = content(t, s, "b")
			assert.Equal(t, testMsg+"second\r\n", got)
			q, _, _ := content(t, s, "c")
			assert.Equal(t, "", q, "the torn record is ignored")
			enqueue(t, s, "d", testMsg)
			require.NoError(t, s.Close())
			s = openT(t, dir, 0)
			_, _, got = content(t, s, "d")
			assert.Equal(t, testMsg, got, "written in a new segment, read back")
			_, _, got = content(t, s, "a")
			assert.Equal(t, testMsg, got)
		})
	}
}

// TestCompaction: segments whose messages are all removed are deleted;
// a sparse one has its live messages copied forward, then is deleted;
// nothing removed comes back, nothing live is lost, across a reopen.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const segSize = 64 << 10
	s, err := Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	body := testMsg + strings.Repeat("y", 3000) + "\r\n"
	const n = 200
	for i := range n {
		enqueue(t, s, fmt.Sprintf("c%03d", i), body)
	}
	first := segFiles(t, dir)
	require.Greater(t, len(first), 5, "several segments")
	// Keep every 50th message (deferred, with a state record), remove
	// the rest.
	var kept []string
	for i := range n {
		id := fmt.Sprintf("c%03d", i)
		if i%50 == 0 {
			q, env, m, err := s.Load(id)
			require.NoError(t, err)
			env.Attempts = 1
			require.NoError(t, s.Save(ctx, env, q, queue.Deferred, nil))
			m.Close()
			kept = append(kept, id)
			continue
		}
		require.NoError(t, s.Remove(ctx, queue.Working, id))
	}
	s.compact()
	after := segFiles(t, dir)
	for _, f := range first[:len(first)-2] { // not the active one, nor the one prepared next
		assert.NotContains(t, after, f, "old segment %s compacted away", f)
	}
	assert.Less(t, len(after), 5, "segments left: %v", after)
	for _, id := range kept {
		q, env, got := content(t, s, id)
		assert.Equal(t, queue.Deferred, q, id)
		assert.Equal(t, 1, env.Attempts)
		assert.Equal(t, body, got)
	}
	require.NoError(t, s.Close())
	s = openT(t, dir, segSize)
	ids, err := s.IDs(queue.Deferred)
	require.NoError(t, err)
	assert.Equal(t, kept, ids)
	ids, err = s.IDs(queue.Working)
	require.NoError(t, err)
	assert.Empty(t, ids, "no removed message came back")
	for _, id := range kept {
		_, _, got := content(t, s, id)
		assert.Equal(t, body, got)
	}
}

// TestCompactionKeepsDoneRecords: a segment holding the done record of a
// message is not deleted while an older segment still holds a record of
// that message, which would come back.
func TestCompactionKeepsDoneRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const segSize = 64 << 10
	s, err := Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	body := testMsg + strings.Repeat("z", 3000) + "\r\n"
	// "old" and "live" share the first segment; "live" stays, so the
	// segment stays (it is dense). "old" is removed once the writes moved
	// on to later segments.
	enqueue(t, s, "old", body)
	for i := range 12 {
		enqueue(t, s, fmt.Sprintf("live%02d", i), body)
	}
	for i := range 40 {
		enqueue(t, s, fmt.Sprintf("f%02d", i), body)
	}
	require.NoError(t, s.Remove(ctx, queue.Working, "old"))
	for i := range 40 {
		require.NoError(t, s.Remove(ctx, queue.Working, fmt.Sprintf("f%02d", i)))
	}
	for i := range 40 { // push the done records out of the active segment
		enqueue(t, s, fmt.Sprintf("g%02d", i), body)
	}
	s.compact()
	require.NoError(t, s.Close())
	s = openT(t, dir, segSize)
	q, _, _ := content(t, s, "old")
	assert.Equal(t, "", q, "a removed message stays removed")
	for i := range 40 {
		q, _, _ := content(t, s, fmt.Sprintf("f%02d", i))
		assert.Equal(t, "", q)
	}
	ids, err := s.IDs(queue.Working)
	require.NoError(t, err)
	assert.Len(t, ids, 52)
}

// TestOwnSegment: a message larger than half a segment gets a segment of
// its own, read back after a reopen, and deleted with the message.
func TestOwnSegment(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const segSize = 64 << 10
	s, err := Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	big := testMsg + strings.Repeat("0123456789abcdef", 20000) + "\r\n"
	enqueue(t, s, "small", testMsg)
	enqueue(t, s, "big", big)
	require.NoError(t, s.Close())
	s = openT(t, dir, segSize)
	_, _, got := content(t, s, "big")
	assert.True(t, got == big, "big message read back")
	var ownSize int64
	for _, f := range segFiles(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		if fi.Size() > segSize {
			ownSize = fi.Size()
		}
	}
	assert.Greater(t, ownSize, int64(len(big)))
	require.NoError(t, s.Remove(ctx, queue.Working, "big"))
	s.compact()
	for _, f := range segFiles(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.LessOrEqual(t, fi.Size(), int64(segSize), "the big message's segment is gone")
	}
}

// TestLocked: one store per directory.
func TestLocked(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir, 0)
	_, err := Open(context.Background(), Config{Dir: dir, Logger: quietLogger()})
	assert.ErrorIs(t, err, ErrLocked)
}

// TestConcurrentEnqueue: many writers share syncs and every record is
// read back after a reopen.
func TestConcurrentEnqueue(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: 256 << 10, Logger: quietLogger()})
	require.NoError(t, err)
	errs := make(chan error, 16)
	for g := range 16 {
		go func() {
			for i := range 40 {
				raw := fmt.Sprintf("%sg%d i%d %s\r\n", testMsg, g, i, strings.Repeat("p", (g*i)%5000))
				m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err := s.Enqueue(context.Background(), newTx(fmt.Sprintf("g%d-%d", g, i)), m); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 16 {
		require.NoError(t, <-errs)
	}
	require.NoError(t, s.Close())
	s = openT(t, dir, 256<<10)
	ids, err := s.IDs(queue.Working)
	require.NoError(t, err)
	assert.Len(t, ids, 640)
	for _, id := range []string{"g0-0", "g15-39", "g7-20"} {
		var g, i int
		fmt.Sscanf(id, "g%d-%d", &g, &i)
		_, _, got := content(t, s, id)
		assert.Equal(t, fmt.Sprintf("%sg%d i%d %s\r\n", testMsg, g, i, strings.Repeat("p", (g*i)%5000)), got)
	}
	assert.True(t, slices.IsSorted(ids))
}

// TestReuse: the files of compacted segments are reused for new segments;
// the records of their earlier use, left after the new ones, are never
// read back as records of the new segment (no removed message returns).
func TestReuse(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const segSize = 64 << 10
	s, err := Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	body := testMsg + strings.Repeat("r", 3000) + "\r\n"
	for i := range 100 {
		enqueue(t, s, fmt.Sprintf("old%03d", i), body)
	}
	for i := range 100 {
		require.NoError(t, s.Remove(ctx, queue.Working, fmt.Sprintf("old%03d", i)))
	}
	for i := range 20 { // the done records leave the active segment
		enqueue(t, s, fmt.Sprintf("mid%02d", i), testMsg)
	}
	s.compact()
	free, _ := filepath.Glob(filepath.Join(dir, "*"+freeSuffix))
	require.NotEmpty(t, free, "compacted segments kept for reuse")
	// New messages fill the reused files, over a part of the old records.
	for i := range 100 {
		enqueue(t, s, fmt.Sprintf("new%02d", i), body)
	}
	after, _ := filepath.Glob(filepath.Join(dir, "*"+freeSuffix))
	assert.Less(t, len(after), len(free), "kept files reused")
	require.NoError(t, s.Close())

	s = openT(t, dir, segSize)
	ids, err := s.IDs(queue.Working)
	require.NoError(t, err)
	assert.Len(t, ids, 120, "the new and mid messages, none of the old ones: %v", ids)
	for _, id := range ids {
		assert.False(t, strings.HasPrefix(id, "old"), id)
	}
	_, _, got := content(t, s, "new99")
	assert.Equal(t, body, got)

	// A record of a file's earlier use does not check in its new segment,
	// even where it lies exactly where the next record would be.
	r := &record{typ: recDone, seq: 5, id: "old001"}
	b := append(r.header(3, r.appendMeta(nil)), r.appendMeta(nil)...)
	_, _, err = parseRecord(b, 3)
	require.NoError(t, err)
	_, _, err = parseRecord(b, 4)
	assert.ErrorIs(t, err, errBadRecord)
}

// TestCompactionWhileRead: a segment whose message is copied forward
// while a loaded copy of it is being read stays until that is closed.
func TestCompactionWhileRead(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const segSize = 64 << 10
	s := openT(t, dir, segSize)
	body := testMsg + strings.Repeat("w", 3000) + "\r\n"
	for i := range 30 {
		enqueue(t, s, fmt.Sprintf("w%02d", i), body)
	}
	_, _, m, err := s.Load("w00")
	require.NoError(t, err)
	s.mu.Lock()
	first := s.entries["w00"].bodySeg
	s.mu.Unlock()
	for i := 1; i < 30; i++ {
		require.NoError(t, s.Remove(ctx, queue.Working, fmt.Sprintf("w%02d", i)))
	}
	s.compact()
	s.mu.Lock()
	moved := s.entries["w00"].bodySeg != first
	_, kept := s.segs[first.num]
	s.mu.Unlock()
	require.True(t, moved, "w00 copied forward out of its sparse segment")
	assert.True(t, kept, "its old segment kept while the loaded message reads it")
	b, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	assert.Equal(t, body, string(b))
	require.NoError(t, m.Close())
	// The compactor of the store's own goroutine (woken by the removals)
	// may still be copying from the segment (a reader of it too): the
	// segment goes once that is done as well.
	assert.Eventually(t, func() bool {
		s.compact()
		s.mu.Lock()
		defer s.mu.Unlock()
		_, kept := s.segs[first.num]
		return !kept
	}, 10*time.Second, 10*time.Millisecond, "deleted once the message is closed")
	_, _, got := content(t, s, "w00")
	assert.Equal(t, body, got)
}

// rounds counts sync rounds and the records they made durable.
type rounds struct {
	queue.Events
	mu     sync.Mutex
	n, ops int
}

func (r *rounds) SpoolCommitted(ops int) {
	r.mu.Lock()
	r.n++
	r.ops += ops
	r.mu.Unlock()
}

// TestEvents: each sync round is reported with the records it made
// durable; concurrent enqueues share rounds.
func TestEvents(t *testing.T) {
	ev := &rounds{}
	s, err := Open(context.Background(), Config{Dir: t.TempDir(), Logger: quietLogger(), Events: ev})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				enqueue(t, s, fmt.Sprintf("e%d-%d", g, i), testMsg)
			}
		}()
	}
	wg.Wait()
	ev.mu.Lock()
	defer ev.mu.Unlock()
	assert.Equal(t, 160, ev.ops, "every record counted once")
	assert.LessOrEqual(t, ev.n, 160)
	assert.Positive(t, ev.n)
	t.Logf("%d records in %d sync rounds", ev.ops, ev.n)
}

// TestAdminDeleteDurable: an operator's Delete (queue.Admin, through
// RemoveDurably) returns only after its done record is synced, where a
// Remove after a delivery does not wait.
func TestAdminDeleteDurable(t *testing.T) {
	ev := &rounds{}
	s, err := Open(context.Background(), Config{Dir: t.TempDir(), Logger: quietLogger(), Events: ev})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	enqueue(t, s, "del1", testMsg)
	synced := func() int {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		return ev.ops
	}
	before := synced()
	require.NoError(t, (&queue.Admin{Store: s}).Delete(context.Background(), "del1"))
	assert.Greater(t, synced(), before, "the done record was synced before Delete returned")
	q, _, _ := content(t, s, "del1")
	assert.Empty(t, q)
}

// TestQuarantinedAtEnqueueLogged: a message accepted straight into a
// quarantine never reaches the scheduler; the store writes the result
// line of each recipient itself, as the spool does.
func TestQuarantinedAtEnqueueLogged(t *testing.T) {
	var logs queuetest.LogBuffer
	s, err := Open(context.Background(), Config{Dir: t.TempDir(), Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	queuetest.QuarantinedAtEnqueueLogged(t, s.Enqueue, &logs)
}
