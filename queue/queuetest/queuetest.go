// Package queuetest is the conformance suite of queue.Store: every store
// (queue.Spool, queue/jetstream.Store, one of a user's) runs it from its
// tests, so that the scheduler and the admin operations behave the same on
// each.
//
//	func TestConformance(t *testing.T) {
//		queuetest.Run(t, func(t *testing.T) queue.Store {
//			st, err := queue.Open(t.TempDir(), queue.SpoolConfig{})
//			require.NoError(t, err)
//			t.Cleanup(func() { st.Close() })
//			return st
//		})
//	}
//
// Run checks the store's methods one by one (add, load, save and move,
// header edits and a replaced body, remove, set aside, queues and IDs,
// locks, Watch), the admin operations through queue.Admin (hold, release,
// bounce, requeue, move, delete, list, show, read), and a queue.Scheduler
// on the store with the real clock and short backoffs: delivery, retry
// after a temporary failure, a bounce (dead queue and DSN), quarantine by
// a postq rule, hold and release, an operator's bounce, the resumption
// of an attempt the process stopped during, a delivered message whose
// removal fails for a while (delivered once, removed once it can be), and
// a message whose outcome record fails for a while after an attempt that
// delivered it to some recipients (not delivered to them again, its DSN
// queued once, the outcome recorded once it can be, also where an
// operator's requeue or hold put it meanwhile).
//
// # Configuration and logging
//
// Run takes the function that opens a fresh, empty store for one test; it
// must register the store's closing with t.Cleanup. The schedulers it runs
// log to a discarding logger.
package queuetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

// Msg is the message the suite queues, unless a test needs another.
const Msg = "From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nHello world.\r\nFrom the body.\r\n"

// waitFor bounds every wait of the suite for something asynchronous.
const waitFor = 20 * time.Second

// Run runs the conformance suite against the stores open returns (a
// fresh, empty one per test).
func Run(t *testing.T, open func(t *testing.T) queue.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st queue.Store)
	}{
		{"AddLoad", testAddLoad},
		{"AddExisting", testAddExisting},
		{"AddInvalid", testAddInvalid},
		{"LoadMissing", testLoadMissing},
		{"SaveMove", testSaveMove},
		{"SaveWrongQueue", testSaveWrongQueue},
		{"SaveHeaderEdit", testSaveHeaderEdit},
		{"SaveReplacedBody", testSaveReplacedBody},
		{"SaveUnsynced", testSaveUnsynced},
		{"Remove", testRemove},
		{"SetAside", testSetAside},
		{"Quarantine", testQuarantine},
		{"Lock", testLock},
		{"Watch", testWatch},
		{"BigMessage", testBigMessage},
		{"AdminHoldRelease", testAdminHoldRelease},
		{"AdminRequeueDead", testAdminRequeueDead},
		{"AdminMoveDelete", testAdminMoveDelete},
		{"AdminListShowRead", testAdminListShowRead},
		{"AdminBounce", testAdminBounce},
		{"SchedulerDelivers", testSchedDelivers},
		{"SchedulerRetries", testSchedRetries},
		{"SchedulerBounces", testSchedBounces},
		{"SchedulerQuarantines", testSchedQuarantines},
		{"SchedulerHoldRelease", testSchedHoldRelease},
		{"SchedulerOperatorBounce", testSchedOperatorBounce},
		{"SchedulerResumesInterrupted", testSchedResumes},
		{"SchedulerRemoveFails", testSchedRemoveFails},
		{"SchedulerOutcomeFails", func(t *testing.T, st queue.Store) { testSchedOutcomeFails(t, st, false) }},
		{"SchedulerOutcomeFailsRequeued", func(t *testing.T, st queue.Store) { testSchedOutcomeFails(t, st, true) }},
		{"SchedulerOutcomeFailsBounce", testSchedOutcomeFailsBounce},
		{"SchedulerOutcomeFailsHeld", testSchedOutcomeFailsHeld},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// NewTx returns a transaction from "from" to rcpts with queue ID id.
func NewTx(id, from string, rcpts ...string) *policy.Transaction {
	tx := policy.NewTransaction(&policy.Conn{ID: "c1", Helo: "client.example.org", ESMTP: true}, id)
	tx.From = policy.MustParseAddress(from)
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return tx
}

// Add stores message raw with a new envelope (from a@example.org to
// rcpts, b@example.com when none) in queue q, and returns the envelope.
func Add(t testing.TB, st queue.Store, id, q, raw string, rcpts ...string) *queue.Envelope {
	t.Helper()
	if len(rcpts) == 0 {
		rcpts = []string{"b@example.com"}
	}
	env, err := queue.NewEnvelope(NewTx(id, "a@example.org", rcpts...), time.Now())
	require.NoError(t, err)
	require.NoError(t, st.Add(context.Background(), env, q, func(w io.Writer) (int64, error) {
		n, err := io.WriteString(w, raw)
		return int64(n), err
	}))
	return env
}

// load returns the queue, envelope and content of id.
func load(t testing.TB, st queue.Store, id string) (string, *queue.Envelope, string) {
	t.Helper()
	q, env, m, err := st.Load(id)
	require.NoError(t, err)
	defer m.Close()
	b, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	return q, env, string(b)
}

// queueOf returns the queue of id, "" when it is gone.
func queueOf(t testing.TB, st queue.Store, id string) string {
	t.Helper()
	q, _, m, err := st.Load(id)
	if errors.Is(err, queue.ErrNotFound) {
		return ""
	}
	require.NoError(t, err)
	m.Close()
	return q
}

func testAddLoad(t *testing.T, st queue.Store) {
	Add(t, st, "m1", queue.Working, Msg, "b@example.com", "c@example.com")
	q, env, content := load(t, st, "m1")
	assert.Equal(t, queue.Working, q)
	assert.Equal(t, Msg, content)
	assert.Equal(t, "m1", env.ID)
	assert.Equal(t, int64(len(Msg)), env.Size)
	assert.Equal(t, "a@example.org", env.From.String())
	require.Len(t, env.Rcpts, 2)
	assert.Equal(t, "c@example.com", env.Rcpts[1].Addr.String())
	assert.Equal(t, queue.RcptPending, env.Rcpts[0].State)
	assert.False(t, env.NextAttempt.IsZero(), "Add sets the first attempt's time")
	ids, err := st.IDs(queue.Working)
	require.NoError(t, err)
	assert.Equal(t, []string{"m1"}, ids)
	ids, err = st.IDs(queue.Deliver)
	require.NoError(t, err)
	assert.Empty(t, ids)
	qs, err := st.Queues()
	require.NoError(t, err)
	assert.Equal(t, []string{queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt}, qs)
}

func testAddExisting(t *testing.T, st queue.Store) {
	Add(t, st, "dup", queue.Working, Msg)
	env, err := queue.NewEnvelope(NewTx("dup", "x@example.org", "y@example.com"), time.Now())
	require.NoError(t, err)
	err = st.Add(context.Background(), env, queue.Deliver, func(w io.Writer) (int64, error) {
		n, err := io.WriteString(w, "Subject: other\r\n\r\nother\r\n")
		return int64(n), err
	})
	require.ErrorIs(t, err, queue.ErrExists)
	q, env, content := load(t, st, "dup")
	assert.Equal(t, queue.Working, q, "the first message is untouched")
	assert.Equal(t, Msg, content)
	assert.Equal(t, "a@example.org", env.From.String())
}

func testAddInvalid(t *testing.T, st queue.Store) {
	write := func(w io.Writer) (int64, error) { n, err := io.WriteString(w, Msg); return int64(n), err }
	env, err := queue.NewEnvelope(NewTx("../x", "a@example.org", "b@example.com"), time.Now())
	require.NoError(t, err)
	assert.ErrorIs(t, st.Add(context.Background(), env, queue.Working, write), queue.ErrBadID)
	env, err = queue.NewEnvelope(NewTx("norcpt", "a@example.org"), time.Now())
	require.NoError(t, err)
	assert.ErrorIs(t, st.Add(context.Background(), env, queue.Working, write), queue.ErrNoRcpts)
	env, err = queue.NewEnvelope(NewTx("badq", "a@example.org", "b@example.com"), time.Now())
	require.NoError(t, err)
	assert.ErrorIs(t, st.Add(context.Background(), env, "nowhere", write), queue.ErrBadQueue)
	assert.Equal(t, "", queueOf(t, st, "badq"))
	// A failed write stores nothing.
	env, err = queue.NewEnvelope(NewTx("failed", "a@example.org", "b@example.com"), time.Now())
	require.NoError(t, err)
	assert.Error(t, st.Add(context.Background(), env, queue.Working, func(w io.Writer) (int64, error) {
		io.WriteString(w, "Subject: x\r\n")
		return 0, errors.New("client went away")
	}))
	assert.Equal(t, "", queueOf(t, st, "failed"))
}

func testLoadMissing(t *testing.T, st queue.Store) {
	_, _, _, err := st.Load("nosuch")
	assert.ErrorIs(t, err, queue.ErrNotFound)
	_, _, _, err = st.Load("../etc")
	assert.ErrorIs(t, err, queue.ErrBadID)
	_, err = st.IDs("nowhere")
	assert.ErrorIs(t, err, queue.ErrBadQueue)
}

func testSaveMove(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "mv", queue.Working, Msg)
	_, env, _ := load(t, st, "mv")
	env.Attempts, env.LastError = 1, "451 4.4.1 later"
	env.NextAttempt = time.Now().Add(time.Hour)
	env.Rcpts[0].Reply = policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "later"}
	require.NoError(t, st.Save(ctx, env, queue.Working, queue.Deferred, nil))
	assert.False(t, env.Moved.IsZero(), "a move stamps Moved")
	q, got, content := load(t, st, "mv")
	assert.Equal(t, queue.Deferred, q)
	assert.Equal(t, Msg, content)
	assert.Equal(t, 1, got.Attempts)
	assert.Equal(t, "451 4.4.1 later", got.LastError)
	assert.Equal(t, 451, got.Rcpts[0].Reply.Code)
	assert.WithinDuration(t, env.NextAttempt, got.NextAttempt, time.Millisecond)
	ids, err := st.IDs(queue.Working)
	require.NoError(t, err)
	assert.Empty(t, ids)
	ids, err = st.IDs(queue.Deferred)
	require.NoError(t, err)
	assert.Equal(t, []string{"mv"}, ids)
	// Saved in place, then moved again.
	got.Attempts = 2
	require.NoError(t, st.Save(ctx, got, queue.Deferred, queue.Deferred, nil))
	_, got, _ = load(t, st, "mv")
	assert.Equal(t, 2, got.Attempts)
	require.NoError(t, st.Save(ctx, got, queue.Deferred, queue.Dead, nil))
	assert.Equal(t, queue.Dead, queueOf(t, st, "mv"))
}

func testSaveWrongQueue(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "wq", queue.Working, Msg)
	_, env, _ := load(t, st, "wq")
	assert.ErrorIs(t, st.Save(ctx, env, queue.Deliver, queue.Deferred, nil), queue.ErrNotFound)
	assert.ErrorIs(t, st.Save(ctx, env, queue.Working, "nowhere", nil), queue.ErrBadQueue)
	assert.Equal(t, queue.Working, queueOf(t, st, "wq"))
}

func testSaveHeaderEdit(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "hdr", queue.Working, Msg)
	q, env, m, err := st.Load("hdr")
	require.NoError(t, err)
	m.Header.Add("DKIM-Signature", "v=1; a=rsa-sha256; d=example.org")
	m.Header.Del("Subject")
	env.PostQDone = true
	require.NoError(t, st.Save(ctx, env, q, queue.Deliver, m))
	m.Close()
	q, env, content := load(t, st, "hdr")
	assert.Equal(t, queue.Deliver, q)
	assert.True(t, env.PostQDone)
	assert.Contains(t, content, "DKIM-Signature: v=1; a=rsa-sha256; d=example.org\r\n")
	assert.NotContains(t, content, "Subject: hello")
	assert.True(t, strings.HasSuffix(content, "\r\n\r\nHello world.\r\nFrom the body.\r\n"), "body unchanged: %q", content)
	// A second edit applies to the edited message.
	q, env, m, err = st.Load("hdr")
	require.NoError(t, err)
	m.Header.Add("X-Second", "yes")
	require.NoError(t, st.Save(ctx, env, q, q, m))
	m.Close()
	_, _, content = load(t, st, "hdr")
	assert.Contains(t, content, "DKIM-Signature: ")
	assert.Contains(t, content, "X-Second: yes\r\n")
	assert.True(t, strings.HasSuffix(content, "\r\n\r\nHello world.\r\nFrom the body.\r\n"))
}

func testSaveReplacedBody(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "body", queue.Working, Msg)
	q, env, m, err := st.Load("body")
	require.NoError(t, err)
	repl := "From: a@example.org\r\nSubject: cleaned\r\n\r\nThe content filter's version.\r\n"
	require.NoError(t, m.Replace(strings.NewReader(repl), int64(len(repl)), nil))
	require.NoError(t, st.Save(ctx, env, q, queue.Deliver, m))
	m.Close()
	q, env, content := load(t, st, "body")
	assert.Equal(t, queue.Deliver, q)
	assert.Equal(t, repl, content)
	assert.Equal(t, int64(len(repl)), env.Size)
}

func testSaveUnsynced(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "un", queue.Working, Msg)
	q, env, m, err := st.Load("un")
	require.NoError(t, err)
	env.Attempts, env.InFlight = 1, true
	env.NextAttempt = time.Now().Add(time.Hour)
	require.NoError(t, st.SaveUnsynced(ctx, env, q, queue.Deliver, nil))
	m.Close()
	q, got, _ := load(t, st, "un")
	assert.Equal(t, queue.Deliver, q, "visible at once")
	assert.True(t, got.InFlight)
	assert.Equal(t, 1, got.Attempts)
	// The outcome's record follows it.
	got.InFlight = false
	require.NoError(t, st.Save(ctx, got, queue.Deliver, queue.Deferred, nil))
	q, got, _ = load(t, st, "un")
	assert.Equal(t, queue.Deferred, q)
	assert.False(t, got.InFlight)
}

func testRemove(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "rm", queue.Working, Msg)
	assert.ErrorIs(t, st.Remove(ctx, queue.Deliver, "rm"), queue.ErrNotFound, "not in that queue")
	require.NoError(t, st.Remove(ctx, queue.Working, "rm"))
	assert.Equal(t, "", queueOf(t, st, "rm"))
	ids, err := st.IDs(queue.Working)
	require.NoError(t, err)
	assert.Empty(t, ids)
	assert.ErrorIs(t, st.Remove(ctx, queue.Working, "rm"), queue.ErrNotFound)
	// The ID can be used again.
	Add(t, st, "rm", queue.Working, Msg)
	assert.Equal(t, queue.Working, queueOf(t, st, "rm"))
}

func testSetAside(t *testing.T, st queue.Store) {
	Add(t, st, "bad", queue.Deferred, Msg)
	st.SetAside(context.Background(), queue.Deferred, "bad", errors.New("test: unreadable"))
	ids, err := st.IDs(queue.Corrupt)
	require.NoError(t, err)
	assert.Equal(t, []string{"bad"}, ids)
	ids, err = st.IDs(queue.Deferred)
	require.NoError(t, err)
	assert.Empty(t, ids)
	require.NoError(t, (&queue.Admin{Store: st}).Delete(context.Background(), "bad"))
	ids, err = st.IDs(queue.Corrupt)
	require.NoError(t, err)
	assert.Empty(t, ids)
}

func testQuarantine(t *testing.T, st queue.Store) {
	ctx := context.Background()
	Add(t, st, "q1", queue.QuarantinePrefix+"virus", Msg)
	Add(t, st, "q2", queue.Working, Msg)
	_, env, _ := load(t, st, "q2")
	require.NoError(t, st.Save(ctx, env, queue.Working, queue.QuarantinePrefix+"spam.v2", nil))
	qs, err := st.Queues()
	require.NoError(t, err)
	assert.Equal(t, []string{queue.QuarantinePrefix + "spam.v2", queue.QuarantinePrefix + "virus"}, qs[6:])
	ids, err := st.IDs(queue.QuarantinePrefix + "spam.v2")
	require.NoError(t, err)
	assert.Equal(t, []string{"q2"}, ids)
	assert.Equal(t, queue.QuarantinePrefix+"virus", queueOf(t, st, "q1"))
	_, err = st.IDs(queue.QuarantinePrefix + "../x")
	assert.ErrorIs(t, err, queue.ErrBadQueue)
}

func testLock(t *testing.T, st queue.Store) {
	unlock, err := st.Lock(context.Background(), "lk")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = st.Lock(ctx, "lk")
	assert.ErrorIs(t, err, context.DeadlineExceeded, "held elsewhere")
	other, err := st.Lock(context.Background(), "other")
	require.NoError(t, err, "another ID is free")
	other()
	got := make(chan error, 1)
	go func() {
		u, err := st.Lock(context.Background(), "lk")
		if err == nil {
			u()
		}
		got <- err
	}()
	unlock()
	select {
	case err := <-got:
		assert.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Lock not given after unlock")
	}
}

func testWatch(t *testing.T, st queue.Store) {
	seen := make(chan [2]string, 10)
	st.Watch(func(id, q string) { seen <- [2]string{id, q} })
	Add(t, st, "w1", queue.Working, Msg)
	select {
	case got := <-seen:
		assert.Equal(t, [2]string{"w1", queue.Working}, got)
	case <-time.After(waitFor):
		t.Fatal("Watch not told of the new message")
	}
	st.Watch(nil)
}

func testBigMessage(t *testing.T, st queue.Store) {
	var b strings.Builder
	b.WriteString("From: a@example.org\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for b.Len() < 25<<20 {
		b.WriteString(line)
	}
	raw := b.String()
	Add(t, st, "big", queue.Working, raw)
	_, env, m, err := st.Load("big")
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, int64(len(raw)), env.Size)
	assert.Equal(t, int64(len(raw)), m.Size())
	got, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	assert.True(t, bytes.Equal([]byte(raw), got), "25 MiB message read back whole")
}

func testAdminHoldRelease(t *testing.T, st queue.Store) {
	ctx := context.Background()
	a := &queue.Admin{Store: st}
	Add(t, st, "h", queue.Working, Msg)
	require.NoError(t, a.Hold(ctx, "h"))
	assert.Equal(t, queue.Hold, queueOf(t, st, "h"))
	assert.ErrorIs(t, a.Hold(ctx, "h"), queue.ErrBadQueue, "held already")
	assert.ErrorIs(t, a.Requeue(ctx, "h"), queue.ErrBadQueue, "Release, not Requeue")
	require.NoError(t, a.Release(ctx, "h"))
	assert.Equal(t, queue.Working, queueOf(t, st, "h"), "postq not yet run: back to working")
	assert.ErrorIs(t, a.Release(ctx, "h"), queue.ErrBadQueue)
	assert.ErrorIs(t, a.Hold(ctx, "nosuch"), queue.ErrNotFound)
}

func testAdminRequeueDead(t *testing.T, st queue.Store) {
	ctx := context.Background()
	a := &queue.Admin{Store: st}
	Add(t, st, "d", queue.Working, Msg, "b@example.com", "c@example.com")
	_, env, _ := load(t, st, "d")
	env.PostQDone = true
	env.Rcpts[0].State, env.Rcpts[0].Reply = queue.RcptFailed, policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
	env.Rcpts[1].State = queue.RcptDelivered
	env.NextAttempt = time.Now().Add(time.Hour)
	require.NoError(t, st.Save(ctx, env, queue.Working, queue.Dead, nil))
	require.NoError(t, a.Requeue(ctx, "d"))
	q, env, _ := load(t, st, "d")
	assert.Equal(t, queue.Deliver, q)
	assert.Equal(t, queue.RcptPending, env.Rcpts[0].State, "the failed recipient is tried again")
	assert.Equal(t, queue.RcptDelivered, env.Rcpts[1].State)
	assert.False(t, env.NextAttempt.After(time.Now()), "due now")
}

func testAdminMoveDelete(t *testing.T, st queue.Store) {
	ctx := context.Background()
	a := &queue.Admin{Store: st}
	Add(t, st, "mq", queue.QuarantinePrefix+"spam", Msg)
	require.NoError(t, a.Move(ctx, "mq", queue.Deliver))
	q, env, _ := load(t, st, "mq")
	assert.Equal(t, queue.Deliver, q)
	assert.True(t, env.PostQDone, "released as is")
	assert.ErrorIs(t, a.Move(ctx, "mq", queue.Corrupt), queue.ErrBadQueue)
	assert.ErrorIs(t, a.Move(ctx, "mq", "nowhere"), queue.ErrBadQueue)
	require.NoError(t, a.Delete(ctx, "mq"))
	assert.Equal(t, "", queueOf(t, st, "mq"))
	assert.ErrorIs(t, a.Delete(ctx, "mq"), queue.ErrNotFound)
}

func testAdminListShowRead(t *testing.T, st queue.Store) {
	a := &queue.Admin{Store: st}
	Add(t, st, "l1", queue.Hold, Msg)
	Add(t, st, "l2", queue.Hold, Msg, "c@example.com")
	l, err := a.List(queue.Hold)
	require.NoError(t, err)
	require.Len(t, l, 2)
	assert.Equal(t, "l1", l[0].ID, "oldest first")
	assert.Equal(t, "c@example.com", l[1].Envelope.Rcpts[0].Addr.String())
	it, err := a.Show("l2")
	require.NoError(t, err)
	assert.Equal(t, queue.Hold, it.Queue)
	assert.Equal(t, "hello", it.Header.Get("Subject"))
	r, err := a.ReadMessage("l1")
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	assert.Equal(t, Msg, string(b))
	_, err = a.Show("nosuch")
	assert.ErrorIs(t, err, queue.ErrNotFound)
}

func testAdminBounce(t *testing.T, st queue.Store) {
	ctx := context.Background()
	a := &queue.Admin{Store: st}
	Add(t, st, "bo", queue.Hold, Msg)
	require.NoError(t, a.Bounce(ctx, "bo"))
	q, env, _ := load(t, st, "bo")
	assert.Equal(t, queue.Deliver, q)
	assert.True(t, env.Returned)
	assert.Equal(t, queue.RcptFailed, env.Rcpts[0].State)
	assert.Equal(t, 550, env.Rcpts[0].Reply.Code)
	Add(t, st, "bd", queue.Dead, Msg)
	assert.ErrorIs(t, a.Bounce(ctx, "bd"), queue.ErrBadQueue)
}

// transport is a fake transport: it answers each recipient with the next
// of its replies (250 when none is left) and records what it delivered.
type transport struct {
	mu      sync.Mutex
	replies map[string][]policy.Reply // by recipient
	got     []Delivery
	handed  map[string]int // how many times each recipient was handed to it
	ch      chan Delivery
}

// Delivery is one recipient's delivery as the suite's transport saw it.
type Delivery struct {
	ID, Rcpt string
	Data     string
}

func newTransport() *transport {
	return &transport{replies: map[string][]policy.Reply{}, handed: map[string]int{}, ch: make(chan Delivery, 100)}
}

func (tr *transport) answer(rcpt string, replies ...policy.Reply) {
	tr.mu.Lock()
	tr.replies[rcpt] = append(tr.replies[rcpt], replies...)
	tr.mu.Unlock()
}

func (tr *transport) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	var b bytes.Buffer
	d.Message.WriteTo(&b)
	out := make([]policy.Reply, len(d.Rcpts))
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for i, r := range d.Rcpts {
		rcpt := r.Addr.String()
		tr.handed[rcpt]++
		out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
		if rs := tr.replies[rcpt]; len(rs) > 0 {
			out[i], tr.replies[rcpt] = rs[0], rs[1:]
		}
		if out[i].Code < 300 {
			dl := Delivery{ID: d.Tx.ID, Rcpt: rcpt, Data: b.String()}
			tr.got = append(tr.got, dl)
			tr.ch <- dl
		}
	}
	return out
}

// wait returns the next delivery.
func (tr *transport) wait(t testing.TB) Delivery {
	t.Helper()
	select {
	case d := <-tr.ch:
		return d
	case <-time.After(waitFor):
		t.Fatal("no delivery")
		return Delivery{}
	}
}

// schedule runs a scheduler on st with short backoffs until the test ends.
func schedule(t *testing.T, st queue.Store, tr *transport, chain *policy.Chain) {
	if chain == nil {
		chain = policy.NewChain()
	}
	sch := queue.NewScheduler(st, queue.Config{
		Chain:        chain,
		Transports:   map[string]queue.Transport{"test": tr},
		DefaultRoute: policy.Route{Transport: "test"},
		MinBackoff:   200 * time.Millisecond,
		MaxBackoff:   time.Second,
		Jitter:       -1,
		Hostname:     "mx.example.net",
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sch.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// eventually waits until cond holds.
func eventually(t *testing.T, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitFor, 10*time.Millisecond, fmt.Sprintf(msg, args...))
}

func testSchedDelivers(t *testing.T, st queue.Store) {
	tr := newTransport()
	schedule(t, st, tr, nil)
	Add(t, st, "s1", queue.Working, Msg)
	d := tr.wait(t)
	assert.Equal(t, Delivery{ID: "s1", Rcpt: "b@example.com", Data: Msg}, d)
	eventually(t, func() bool { return queueOf(t, st, "s1") == "" }, "delivered message removed")
}

func testSchedRetries(t *testing.T, st queue.Store) {
	tr := newTransport()
	tr.answer("b@example.com", policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"})
	schedule(t, st, tr, nil)
	start := time.Now()
	Add(t, st, "r1", queue.Working, Msg)
	d := tr.wait(t)
	assert.Equal(t, "r1", d.ID)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond, "retried after MinBackoff")
	eventually(t, func() bool { return queueOf(t, st, "r1") == "" }, "delivered at the second attempt")
}

func testSchedBounces(t *testing.T, st queue.Store) {
	tr := newTransport()
	tr.answer("b@example.com", policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"})
	schedule(t, st, tr, nil)
	Add(t, st, "b1", queue.Working, Msg)
	d := tr.wait(t) // the DSN, to the sender
	assert.Equal(t, "a@example.org", d.Rcpt)
	assert.Contains(t, d.Data, "Action: failed")
	assert.Contains(t, d.Data, "5.1.1")
	eventually(t, func() bool { return queueOf(t, st, "b1") == queue.Dead }, "failed message in dead")
	_, env, _ := load(t, st, "b1")
	assert.Equal(t, queue.RcptFailed, env.Rcpts[0].State)
	assert.True(t, env.Rcpts[0].DSN)
}

func testSchedQuarantines(t *testing.T, st queue.Store) {
	tr := newTransport()
	chain := policy.NewChain()
	chain.PostQ("virus", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if m.Header.Get("Subject") == "infected" {
			return policy.Quarantine("virus")
		}
		return policy.Next()
	})
	schedule(t, st, tr, chain)
	Add(t, st, "v1", queue.Working, strings.Replace(Msg, "Subject: hello", "Subject: infected", 1))
	Add(t, st, "v2", queue.Working, Msg)
	assert.Equal(t, "v2", tr.wait(t).ID)
	eventually(t, func() bool { return queueOf(t, st, "v1") == queue.QuarantinePrefix+"virus" }, "quarantined")
	// Released, it is delivered as it is.
	require.NoError(t, (&queue.Admin{Store: st}).Release(context.Background(), "v1"))
	assert.Equal(t, "v1", tr.wait(t).ID)
	eventually(t, func() bool { return queueOf(t, st, "v1") == "" }, "delivered")
}

func testSchedHoldRelease(t *testing.T, st queue.Store) {
	ctx := context.Background()
	a := &queue.Admin{Store: st}
	tr := newTransport()
	Add(t, st, "held", queue.Working, Msg)
	require.NoError(t, a.Hold(ctx, "held"))
	schedule(t, st, tr, nil)
	Add(t, st, "free", queue.Working, Msg)
	assert.Equal(t, "free", tr.wait(t).ID, "the held message is not delivered")
	assert.Equal(t, queue.Hold, queueOf(t, st, "held"))
	require.NoError(t, a.Release(ctx, "held"))
	assert.Equal(t, "held", tr.wait(t).ID)
	eventually(t, func() bool { return queueOf(t, st, "held") == "" }, "delivered")
}

func testSchedOperatorBounce(t *testing.T, st queue.Store) {
	ctx := context.Background()
	tr := newTransport()
	for range 20 {
		tr.answer("b@example.com", policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"})
	}
	schedule(t, st, tr, nil)
	Add(t, st, "ob", queue.Working, Msg)
	eventually(t, func() bool { return queueOf(t, st, "ob") == queue.Deferred }, "deferred")
	require.NoError(t, (&queue.Admin{Store: st}).Bounce(ctx, "ob"))
	d := tr.wait(t)
	assert.Equal(t, "a@example.org", d.Rcpt, "the DSN to the sender")
	assert.Contains(t, d.Data, "Message returned to sender by the mail system administrator")
	eventually(t, func() bool { return queueOf(t, st, "ob") == "" }, "a returned message is deleted")
}

func testSchedResumes(t *testing.T, st queue.Store) {
	ctx := context.Background()
	// The record of an attempt that did not finish: the process stopped
	// during it (its next attempt an hour away).
	Add(t, st, "crash", queue.Working, Msg)
	q, env, m, err := st.Load("crash")
	require.NoError(t, err)
	env.PostQDone, env.InFlight, env.Attempts = true, true, 1
	env.LastAttempt, env.NextAttempt = time.Now(), time.Now().Add(time.Hour)
	require.NoError(t, st.SaveUnsynced(ctx, env, q, queue.Deliver, nil))
	m.Close()
	tr := newTransport()
	schedule(t, st, tr, nil)
	assert.Equal(t, "crash", tr.wait(t).ID, "made again at once")
	eventually(t, func() bool { return queueOf(t, st, "crash") == "" }, "delivered")
	assert.Len(t, slices.Collect(func(yield func(Delivery) bool) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, d := range tr.got {
			if !yield(d) {
				return
			}
		}
	}), 1)
}

// failingRemove is a store whose Remove fails while fail is set (as on a
// full disk), counting the failures.
type failingRemove struct {
	queue.Store
	fail  atomic.Bool
	tries atomic.Int32
}

var errRemove = errors.New("queuetest: removal fails (a full disk)")

func (f *failingRemove) Remove(ctx context.Context, q, id string) error {
	if f.fail.Load() {
		f.tries.Add(1)
		return errRemove
	}
	return f.Store.Remove(ctx, q, id)
}

// failingRemoveShared is a failingRemove over a SharedStore.
type failingRemoveShared struct {
	*failingRemove
	shared queue.SharedStore
}

func (f failingRemoveShared) Claim(id string) (func(), bool) { return f.shared.Claim(id) }

// testSchedRemoveFails: a delivered message whose removal fails is not
// delivered again, neither when the store hands it out again (a shared
// store, after its claim) nor when an operator requeues it, and is removed
// once removal works again.
func testSchedRemoveFails(t *testing.T, st queue.Store) {
	fr := &failingRemove{Store: st}
	var wst queue.Store = fr
	if sh, ok := st.(queue.SharedStore); ok {
		wst = failingRemoveShared{fr, sh}
	}
	fr.fail.Store(true)
	tr := newTransport()
	schedule(t, wst, tr, nil)
	Add(t, st, "rm1", queue.Working, Msg)
	assert.Equal(t, "rm1", tr.wait(t).ID)
	// Retried with backoff (200 ms, 400 ms, 800 ms, then every second
	// with the suite's backoffs), kept meanwhile.
	eventually(t, func() bool { return fr.tries.Load() >= 3 }, "removal retried")
	assert.Equal(t, queue.Deliver, queueOf(t, st, "rm1"), "kept while its removal fails")
	require.NoError(t, (&queue.Admin{Store: wst}).Requeue(context.Background(), "rm1"))
	// Two more retries: time for a second delivery, had there been one.
	n := fr.tries.Load()
	eventually(t, func() bool { return fr.tries.Load() >= n+2 }, "removal retried after the requeue")
	fr.fail.Store(false)
	eventually(t, func() bool { return queueOf(t, st, "rm1") == "" }, "removed once removal works")
	tr.mu.Lock()
	defer tr.mu.Unlock()
	assert.Len(t, tr.got, 1, "delivered once")
}

// handedTo returns how many times rcpt was handed to the transport, and
// how many of those deliveries succeeded.
func (tr *transport) handedTo(rcpt string) (handed, delivered int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, d := range tr.got {
		if d.Rcpt == rcpt {
			delivered++
		}
	}
	return tr.handed[rcpt], delivered
}

// failingSave is a store whose Save fails while fail is set (as on a full
// disk), counting the failures; SaveUnsynced, the record of an attempt
// about to start, goes through.
type failingSave struct {
	queue.Store
	fail  atomic.Bool
	tries atomic.Int32
}

var errSave = errors.New("queuetest: save fails (a full disk)")

func (f *failingSave) Save(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message) error {
	if f.fail.Load() {
		f.tries.Add(1)
		return errSave
	}
	return f.Store.Save(ctx, env, from, to, m)
}

// failingSaveShared is a failingSave over a SharedStore.
type failingSaveShared struct {
	*failingSave
	shared queue.SharedStore
}

func (f failingSaveShared) Claim(id string) (func(), bool) { return f.shared.Claim(id) }

// failSaves returns st wrapped in a failingSave (whose Save fails while
// its fail is set), a SharedStore still when st is one.
func failSaves(st queue.Store) (*failingSave, queue.Store) {
	fs := &failingSave{Store: st}
	if sh, ok := st.(queue.SharedStore); ok {
		return fs, failingSaveShared{fs, sh}
	}
	return fs, fs
}

var (
	reply451 = policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"}
	reply550 = policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
)

// retriedNotRedelivered waits until fs's Save failed n times more than
// before, or rcpt was handed to tr again (the failure looked for), and
// checks that it was not.
func retriedNotRedelivered(t *testing.T, fs *failingSave, n int32, tr *transport, rcpt, what string) {
	t.Helper()
	eventually(t, func() bool {
		handed, _ := tr.handedTo(rcpt)
		return fs.tries.Load() >= n || handed > 1
	}, "outcome record retried %s", what)
	handed, _ := tr.handedTo(rcpt)
	require.Equal(t, 1, handed, "%s: not handed to the transport again while its outcome is pending (%s)", rcpt, what)
}

// testSchedOutcomeFails: an attempt delivers a message to one recipient
// and defers the other; the record of that outcome fails for a while.
// The delivered recipient gets the message once: neither the retries nor
// (requeue) an operator's requeue meanwhile hand it over again. Once the
// store saves again, the outcome is recorded, and the deferred recipient
// is tried again until it is delivered.
func testSchedOutcomeFails(t *testing.T, st queue.Store, requeue bool) {
	ctx := context.Background()
	fs, wst := failSaves(st)
	fs.fail.Store(true)
	tr := newTransport()
	tr.answer("c@example.com", reply451, reply451)
	schedule(t, wst, tr, nil)
	Add(t, st, "of1", queue.Working, Msg, "b@example.com", "c@example.com")
	assert.Equal(t, Delivery{ID: "of1", Rcpt: "b@example.com", Data: Msg}, tr.wait(t))
	// Retried with backoff (200 ms, 400 ms...), kept meanwhile where its
	// attempt record put it.
	retriedNotRedelivered(t, fs, 3, tr, "b@example.com", "after the attempt")
	assert.Equal(t, queue.Deliver, queueOf(t, st, "of1"), "as its attempt record left it")
	if requeue {
		// An operator's requeue (its own save goes through) wakes it:
		// the record is tried, nothing delivered.
		require.NoError(t, (&queue.Admin{Store: st}).Requeue(ctx, "of1"))
		retriedNotRedelivered(t, fs, fs.tries.Load()+2, tr, "b@example.com", "after a requeue")
	}
	fs.fail.Store(false)
	assert.Equal(t, Delivery{ID: "of1", Rcpt: "c@example.com", Data: Msg}, tr.wait(t))
	eventually(t, func() bool { return queueOf(t, st, "of1") == "" }, "removed once delivered to both")
	handed, delivered := tr.handedTo("b@example.com")
	assert.Equal(t, [2]int{1, 1}, [2]int{handed, delivered}, "b@example.com: delivered once")
	handed, delivered = tr.handedTo("c@example.com")
	assert.Equal(t, [2]int{3, 1}, [2]int{handed, delivered}, "c@example.com: deferred twice, then delivered")
}

// testSchedOutcomeFailsBounce: an attempt delivers a message to one
// recipient and fails the other for good, its DSN queued; the record of
// that outcome (the move to dead) fails for a while. Neither the delivery
// nor the DSN is made twice, and the message ends in dead.
func testSchedOutcomeFailsBounce(t *testing.T, st queue.Store) {
	fs, wst := failSaves(st)
	fs.fail.Store(true)
	tr := newTransport()
	tr.answer("c@example.com", reply550)
	schedule(t, wst, tr, nil)
	Add(t, st, "ob1", queue.Working, Msg, "b@example.com", "c@example.com")
	got := map[string]Delivery{}
	for range 2 { // the delivery and the DSN to the sender
		d := tr.wait(t)
		got[d.Rcpt] = d
	}
	assert.Equal(t, "ob1", got["b@example.com"].ID)
	assert.Contains(t, got["a@example.org"].Data, "Action: failed")
	assert.Contains(t, got["a@example.org"].Data, "5.1.1")
	retriedNotRedelivered(t, fs, 3, tr, "b@example.com", "after the attempt")
	assert.Equal(t, queue.Deliver, queueOf(t, st, "ob1"), "as its attempt record left it")
	fs.fail.Store(false)
	eventually(t, func() bool { return queueOf(t, st, "ob1") == queue.Dead }, "in dead once recorded")
	eventually(t, func() bool {
		for _, q := range []string{queue.Working, queue.Deliver, queue.Deferred} {
			if ids, err := st.IDs(q); err != nil || len(ids) > 0 {
				return false
			}
		}
		return true
	}, "nothing left to deliver")
	_, env, _ := load(t, st, "ob1")
	assert.Equal(t, queue.RcptDelivered, env.Rcpts[0].State)
	assert.Equal(t, queue.RcptFailed, env.Rcpts[1].State)
	assert.True(t, env.Rcpts[1].DSN, "its DSN recorded")
	assert.False(t, env.InFlight)
	handed, delivered := tr.handedTo("b@example.com")
	assert.Equal(t, [2]int{1, 1}, [2]int{handed, delivered}, "b@example.com: delivered once")
	handed, _ = tr.handedTo("c@example.com")
	assert.Equal(t, 1, handed, "c@example.com: failed once")
	_, delivered = tr.handedTo("a@example.org")
	assert.Equal(t, 1, delivered, "one DSN")
}

// testSchedOutcomeFailsHeld: an operator holds a message whose outcome
// record is pending. The hold stands: the outcome is recorded into the
// held message, and once released only the recipient left is delivered.
func testSchedOutcomeFailsHeld(t *testing.T, st queue.Store) {
	ctx := context.Background()
	fs, wst := failSaves(st)
	fs.fail.Store(true)
	tr := newTransport()
	tr.answer("c@example.com", reply451)
	schedule(t, wst, tr, nil)
	Add(t, st, "oh1", queue.Working, Msg, "b@example.com", "c@example.com")
	assert.Equal(t, "b@example.com", tr.wait(t).Rcpt)
	retriedNotRedelivered(t, fs, 1, tr, "b@example.com", "after the attempt")
	a := &queue.Admin{Store: st}
	require.NoError(t, a.Hold(ctx, "oh1"))
	retriedNotRedelivered(t, fs, fs.tries.Load()+2, tr, "b@example.com", "after a hold")
	fs.fail.Store(false)
	eventually(t, func() bool {
		q, env, _ := load(t, st, "oh1")
		return q == queue.Hold && env.Rcpts[0].State == queue.RcptDelivered
	}, "outcome recorded in hold")
	_, env, _ := load(t, st, "oh1")
	assert.Equal(t, queue.RcptPending, env.Rcpts[1].State)
	assert.Equal(t, 451, env.Rcpts[1].Reply.Code)
	assert.False(t, env.InFlight)
	require.NoError(t, a.Release(ctx, "oh1"))
	assert.Equal(t, Delivery{ID: "oh1", Rcpt: "c@example.com", Data: Msg}, tr.wait(t))
	eventually(t, func() bool { return queueOf(t, st, "oh1") == "" }, "removed once delivered to both")
	handed, delivered := tr.handedTo("b@example.com")
	assert.Equal(t, [2]int{1, 1}, [2]int{handed, delivered}, "b@example.com: delivered once")
	handed, delivered = tr.handedTo("c@example.com")
	assert.Equal(t, [2]int{2, 1}, [2]int{handed, delivered}, "c@example.com: deferred, then delivered after the release")
}
