//go:build linux

package journal

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/diskfull"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

func tryEnqueue(s *Store, id, raw string) error {
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		return err
	}
	return s.Enqueue(context.Background(), newTx(id), m)
}

// TestDiskFull: on a full filesystem the journal goes on in the room it
// owns (the rest of the active segment and the one prepared next, written
// whole before use), then refuses (an error: the client gets 4xx) once the
// next segment cannot be made; a message larger than half a segment,
// whose segment of its own cannot be written, is refused too. Neither
// stops the store: once there is room again the next message is stored at
// once, and every message acknowledged before, during and after is there
// after a reopen, the refused ones not.
func TestDiskFull(t *testing.T) {
	const segSize = 64 << 10
	dir := diskfull.Tmpfs(t, "1m")
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { s.Close() }()
	body := testMsg + strings.Repeat("x", 4000) + "\r\n" // 16 to a segment
	big := testMsg + strings.Repeat("0123456789abcdef", 2500) + "\r\n"
	var acked, refused []string
	send := func(id, raw string) error {
		err := tryEnqueue(s, id, raw)
		if err == nil {
			acked = append(acked, id)
		} else {
			refused = append(refused, id)
		}
		return err
	}
	require.NoError(t, send("before", body))
	filler := diskfull.Fill(t, dir)

	assert.Error(t, send("big-full", big), "a segment of its own on a full filesystem")
	ownFiles := 0
	for _, f := range segFiles(t, dir) {
		if fi, err := os.Stat(filepath.Join(dir, f)); err == nil && fi.Size() > segSize {
			ownFiles++
		}
	}
	assert.Zero(t, ownFiles, "the refused message's own segment is removed at once")

	n := 0
	for ; n < 100; n++ {
		if err := send(fmt.Sprintf("full-%03d", n), body); err != nil {
			break
		}
	}
	require.Less(t, n, 100, "the journal never refused on a full filesystem")
	assert.Positive(t, n, "the active and the prepared segment's room is used")
	t.Logf("%d messages stored on the full filesystem before the first refusal", n)
	assert.Error(t, send("full-again", body), "still full: refused again")

	require.NoError(t, os.Remove(filler))
	require.NoError(t, send("after", body), "room again: the next message is stored at once")
	require.NoError(t, send("big-after", big), "and a large one")
	require.NoError(t, s.Close())

	s, err = Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	for _, id := range acked {
		q, _, got := content(t, s, id)
		assert.Equal(t, "working", q, "acknowledged %s", id)
		if id == "big-after" {
			assert.True(t, got == big, "%s read back", id)
		} else {
			assert.Equal(t, body, got, "acknowledged %s", id)
		}
	}
	for _, id := range refused {
		q, _, _ := content(t, s, id)
		assert.Empty(t, q, "refused %s must not be stored", id)
	}
}

// prepFailures counts the log entries of failed segment preparations.
type prepFailures struct{ n atomic.Int32 }

func (p *prepFailures) Enabled(context.Context, slog.Level) bool { return true }
func (p *prepFailures) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "journal: preparing a segment" {
		p.n.Add(1)
	}
	return nil
}
func (p *prepFailures) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *prepFailures) WithGroup(string) slog.Handler      { return p }

// TestPrepareErrorNotStale: a segment that could not be made is reported
// to the writer waiting for it, never kept for a later writer: once room
// is back, the next writer gets a segment at once. (The preparer used to
// try again every second on its own and hold the failure until a writer
// came: the first message after the disk was freed got it, a 4xx.)
func TestPrepareErrorNotStale(t *testing.T) {
	const segSize = 64 << 10
	dir := diskfull.Tmpfs(t, "512k")
	// Full before Open: the first segment, made a second after Open
	// when no writer asks sooner, cannot be made either.
	filler := diskfull.Fill(t, dir)
	fails := &prepFailures{}
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: slog.New(fails)})
	require.NoError(t, err)
	defer s.Close()
	// No segment yet, and none can be made: refused.
	require.Error(t, tryEnqueue(s, "m1", testMsg))
	require.Error(t, tryEnqueue(s, "m2", testMsg))
	seen := fails.n.Load()
	assert.GreaterOrEqual(t, seen, int32(2), "each refusal comes from an attempt")
	// An attempt made on its own while nobody waits (the old preparer
	// made one a second after each failure) must not reach the next
	// writer: give it the chance to happen.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for fails.n.Load() == seen && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, os.Remove(filler))
	require.NoError(t, tryEnqueue(s, "m3", testMsg), "room again: stored at once, not refused with an earlier failure")
	_, _, got := content(t, s, "m3")
	assert.Equal(t, testMsg, got)
}

// TestDiskFullReservedRoom: on a full filesystem, once the next segment
// cannot be made and new messages are refused, the active segment's
// reserved room still takes state records (an attempt, a move) and, past
// them, done records: a delivered message leaves the queue. Attempts are
// refused before the done room is touched, so the done records of the
// attempts under way still fit. (Before the room was reserved, the
// refusal of a message dropped the active segment, and every later
// change, a done record too, needed a new segment.)
func TestDiskFullReservedRoom(t *testing.T) {
	const segSize = 128 << 10
	ctx := context.Background()
	dir := diskfull.Tmpfs(t, "1m")
	s, err := Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { s.Close() }()
	// The keeper keeps the first segment live, so that no segment is
	// compacted away (which would give room back) during the test.
	keeper := testMsg + strings.Repeat("k", 40<<10) + "\r\n"
	require.NoError(t, tryEnqueue(s, "keeper", keeper))
	filler := diskfull.Fill(t, dir)

	// Fillers with IDs of the longest kind (the largest done records).
	var fillers []string
	for i := 0; i < 1000; i++ {
		id := fmt.Sprintf("f%04d-%s", i, strings.Repeat("x", 122))
		env, err := queue.NewEnvelope(newTx(id), time.Now())
		require.NoError(t, err)
		err = s.Add(ctx, env, queue.Hold, func(w io.Writer) (int64, error) {
			n, err := io.WriteString(w, testMsg)
			return int64(n), err
		})
		if err != nil {
			break
		}
		fillers = append(fillers, id)
	}
	require.Positive(t, len(fillers))
	require.Less(t, len(fillers), 1000, "never refused on a full filesystem")
	start := time.Now()
	require.Error(t, tryEnqueue(s, "refused", testMsg+strings.Repeat("r", 2<<10)+"\r\n"), "a new message is refused")
	t.Logf("%d messages stored on the full filesystem; a refusal took %v", len(fillers), time.Since(start))

	// State records: into the state room, until it is used up.
	states := 0
	for _, id := range fillers {
		q, env, m, err := s.Load(id)
		require.NoError(t, err)
		m.Close()
		env.LastError = "state record " + id
		if err := s.Save(ctx, env, q, q, nil); err != nil {
			break
		}
		states++
	}
	assert.Positive(t, states, "state records fit the reserved room while new messages are refused")
	assert.Less(t, states, len(fillers), "state records never take the done room")

	// Done records: into the done room (and what the state records left).
	dones := 0
	for i := len(fillers) - 1; i >= 0; i-- {
		if err := s.Remove(ctx, queue.Hold, fillers[i]); err != nil {
			break
		}
		dones++
	}
	doneSize := int64(headLen + 4 + len(fillers[0]))
	t.Logf("reserved: state room %d bytes, done room %d bytes; %d state records, then %d done records of %d bytes fit", s.stateRoom, s.doneRoom, states, dones, doneSize)
	assert.GreaterOrEqual(t, int64(dones), s.doneRoom/doneSize, "the done room takes done records")
	require.Less(t, dones, len(fillers), "the room ran out before the fillers")
	removed := fillers[len(fillers)-dones:]
	kept := fillers[:len(fillers)-dones]

	require.NoError(t, os.Remove(filler))
	require.NoError(t, s.Remove(ctx, queue.Hold, kept[len(kept)-1]), "room again: a new segment takes the done record")
	removed, kept = append(removed, kept[len(kept)-1]), kept[:len(kept)-1]
	require.NoError(t, tryEnqueue(s, "after", testMsg), "and a new message")
	require.NoError(t, s.Close())

	s, err = Open(ctx, Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	for _, id := range removed {
		q, _, _ := content(t, s, id)
		assert.Empty(t, q, "removed %s stays removed", id)
	}
	for i, id := range kept {
		q, env, got := content(t, s, id)
		assert.Equal(t, queue.Hold, q, "kept %s", id)
		assert.Equal(t, testMsg, got)
		if i < states && env != nil {
			assert.Equal(t, "state record "+id, env.LastError)
		}
	}
	q, _, got := content(t, s, "keeper")
	assert.Equal(t, queue.Working, q)
	assert.Equal(t, keeper, got)
	q, _, _ = content(t, s, "after")
	assert.Equal(t, queue.Working, q)
}

// addHold stores raw as message id in the hold queue (no scheduler
// delivers it).
func addHold(s *Store, id, raw string) error {
	env, err := queue.NewEnvelope(newTx(id), time.Now())
	if err != nil {
		return err
	}
	return s.Add(context.Background(), env, queue.Hold, func(w io.Writer) (int64, error) {
		n, err := io.WriteString(w, raw)
		return int64(n), err
	})
}

// useUpRoom uses up the room of a journal on a full filesystem: new
// messages (in hold, with the longest IDs) until refused, state records
// until refused, done records until refused. It returns the number of
// each.
func useUpRoom(t *testing.T, s *Store) (full, states, dones int) {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for i := 0; i < 2000; i++ {
		id := fmt.Sprintf("f%04d-%s", i, strings.Repeat("x", 122))
		if addHold(s, id, testMsg) != nil {
			break
		}
		ids = append(ids, id)
	}
	require.Less(t, len(ids), 2000, "new messages never refused")
	full = len(ids)
	for _, id := range ids {
		q, env, m, err := s.Load(id)
		require.NoError(t, err)
		m.Close()
		if s.Save(ctx, env, q, q, nil) != nil {
			break
		}
		states++
	}
	require.Less(t, states, len(ids), "state records never refused")
	for i := len(ids) - 1; i >= 0 && s.Remove(ctx, queue.Hold, ids[i]) == nil; i-- {
		dones++
	}
	require.Less(t, dones, len(ids), "done records never refused")
	return full, states, dones
}

// logEvents passes the messages of the log records to a channel.
type logEvents chan string

func (l logEvents) Enabled(context.Context, slog.Level) bool { return true }
func (l logEvents) Handle(_ context.Context, r slog.Record) error {
	select {
	case l <- r.Message:
	default:
	}
	return nil
}
func (l logEvents) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logEvents) WithGroup(string) slog.Handler      { return l }

// waitLog waits for a log message containing want.
func waitLog(t *testing.T, l logEvents, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case msg := <-l:
			if strings.Contains(msg, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no log message %q", want)
		}
	}
}

// logOrDelivery waits for a log message containing want, or a delivery
// (started), and returns the message, "delivered again" or "timeout".
func logOrDelivery(logs logEvents, started chan struct{}, want string) string {
	timeout := time.After(20 * time.Second)
	for {
		select {
		case msg := <-logs:
			if strings.Contains(msg, want) {
				return msg
			}
		case <-started:
			return "delivered again"
		case <-timeout:
			return "timeout"
		}
	}
}

// TestSchedulerDiskFullDeliveredOnce: a message delivered while the disk
// is full and the journal's reserved room is used up, so that its done
// record cannot be written, is not delivered again by the scheduler (not
// even by a restart of Run), and its done record lands once there is room
// again: after a reopen it is gone. (Before, the scheduler logged the
// failure and left the message in the queue: a restart of Run delivered
// it again, and it was never removed.)
func TestSchedulerDiskFullDeliveredOnce(t *testing.T) {
	const segSize = 128 << 10
	dir := diskfull.Tmpfs(t, "1m")
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { s.Close() }()
	keeper := testMsg + strings.Repeat("k", 40<<10) + "\r\n" // keeps the first segment live
	require.NoError(t, addHold(s, "keeper", keeper))

	var delivered atomic.Int32
	started, gate := make(chan struct{}, 10), make(chan struct{})
	tr := queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		delivered.Add(1)
		started <- struct{}{}
		<-gate
		return []policy.Reply{{Code: 250, Enhanced: "2.0.0", Text: "OK"}}
	})
	logs := make(logEvents, 1000)
	sch := queue.NewScheduler(s, queue.Config{
		Transports:   map[string]queue.Transport{"test": tr},
		DefaultRoute: policy.Route{Transport: "test"},
		MinBackoff:   50 * time.Millisecond,
		MaxBackoff:   200 * time.Millisecond,
		Jitter:       -1,
		Hostname:     "mx.example.net",
		Logger:       slog.New(logs),
	})
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			sch.Run(ctx)
		}()
		return func() { cancel(); <-done }
	}
	var open sync.Once
	deliver := func() { open.Do(func() { close(gate) }) }
	stop := run()
	defer func() { deliver(); stop() }()
	// An ID as long as the fillers': its done record is as large as
	// theirs, the last of which did not fit.
	victim := "victim-" + strings.Repeat("v", 121)
	require.NoError(t, tryEnqueue(s, victim, testMsg))
	select {
	case <-started: // its attempt record is written
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}

	filler := diskfull.Fill(t, dir)
	full, states, dones := useUpRoom(t, s)
	t.Logf("room used up: %d new messages, %d state records, %d done records", full, states, dones)
	deliver() // delivered: its done record does not fit
	waitLog(t, logs, "cannot remove delivered message")
	assert.Equal(t, int32(1), delivered.Load())

	// A restart of Run finds it in deliver, an attempt under way: it is
	// not delivered again.
	stop()
	stop = run()
	assert.Contains(t, logOrDelivery(logs, started, "not delivered again"), "not delivered again")
	assert.Equal(t, int32(1), delivered.Load(), "delivered once")
	q, _, _ := content(t, s, victim)
	assert.Equal(t, queue.Deliver, q, "kept while its done record cannot be written")

	require.NoError(t, os.Remove(filler))
	assert.Contains(t, logOrDelivery(logs, started, "removed"), "delivered message "+victim+" removed")
	q, _, _ = content(t, s, victim)
	assert.Empty(t, q, "removed once there is room")
	stop()
	stop = func() {}
	require.NoError(t, s.Close())

	s, err = Open(context.Background(), Config{Dir: dir, SegmentSize: segSize, Logger: quietLogger()})
	require.NoError(t, err)
	q, _, _ = content(t, s, victim)
	assert.Empty(t, q, "its done record is on disk")
	q, _, got := content(t, s, "keeper")
	assert.Equal(t, queue.Hold, q)
	assert.Equal(t, keeper, got)
	assert.Equal(t, int32(1), delivered.Load(), "delivered once")
}
