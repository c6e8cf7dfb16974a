package queue

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// removeFails is a Store whose Remove fails while fail is set, telling
// each call.
type removeFails struct {
	Store
	fail  atomic.Bool
	calls chan error
}

func (r *removeFails) Remove(ctx context.Context, q, id string) error {
	err := errors.New("no space left on device")
	if !r.fail.Load() {
		err = r.Store.Remove(ctx, q, id)
	}
	r.calls <- err
	return err
}

// afterClock is a fakeClock that tells the delay of each After.
type afterClock struct {
	*fakeClock
	afters chan time.Duration
}

func (c *afterClock) After(d time.Duration) <-chan time.Time {
	ch := c.fakeClock.After(d)
	c.afters <- d
	return ch
}

// logRecords keeps the level and message of each log record.
type logRecords struct {
	mu   sync.Mutex
	recs []string
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Level.String()+" "+r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// count returns how many records start with prefix.
func (l *logRecords) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// TestRemovalPending: a delivered message whose Remove fails is kept from
// delivery (a wake-up, a restart of Run) and its removal retried after 1s,
// 2s, 4s... (MinBackoff 5 min: the first retry after 1s), logged at ERROR
// once, DEBUG after, INFO when it is removed; Run stopping makes a last
// try and says what is left (WARN); the next Run goes on retrying.
func TestRemovalPending(t *testing.T) {
	h := newHarness(t, "", Config{})
	st := &removeFails{Store: h.sp, calls: make(chan error, 100)}
	st.fail.Store(true)
	clock := &afterClock{fakeClock: h.clock, afters: make(chan time.Duration, 100)}
	logs := &logRecords{}
	h.sch = NewScheduler(st, Config{
		Transports:   map[string]Transport{"fake": h.tr},
		DefaultRoute: h.sch.cfg.DefaultRoute,
		Jitter:       -1,
		Retention:    -1,
		Hostname:     "mx.test",
		Clock:        clock,
		Logger:       slog.New(logs),
	})
	h.sch.afterWork = func(id string) { h.done <- id }
	next := func(what string) {
		t.Helper()
		select {
		case err := <-st.calls:
			if st.fail.Load() {
				require.Error(t, err, what)
			} else {
				require.NoError(t, err, what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no Remove call: %s", what)
		}
	}
	delay := func(want time.Duration) {
		t.Helper()
		select {
		case d := <-clock.afters:
			require.Equal(t, want, d)
		case <-time.After(10 * time.Second):
			t.Fatalf("no retry scheduled (want %v)", want)
		}
	}
	h.start()
	h.enqueue(newTx("p1", "a@example.org", "b@example.com"), testMsg)
	next("after the delivery")
	h.wait("p1")
	assert.Equal(t, 1, logs.count("ERROR queue: cannot remove delivered message p1"))
	assert.Equal(t, Deliver, h.queueOf("p1"))

	delay(time.Second)
	h.sch.wake("p1", Deliver) // woken again (an operator's requeue, say)
	h.wait("p1")
	assert.Equal(t, 1, h.tr.callCount(), "not delivered again")
	clock.Advance(time.Second)
	next("first retry")
	delay(2 * time.Second)
	clock.Advance(2 * time.Second)
	next("second retry")
	delay(4 * time.Second)
	assert.Equal(t, 2, logs.count("DEBUG queue: removal of a delivered message failed again"))
	assert.Equal(t, 1, logs.count("ERROR"), "one ERROR")

	h.stop() // a last try, then the message is given back
	next("last try")
	assert.Equal(t, 1, logs.count("WARN queue: stopping with 1 delivered messages not removed"))
	h.start() // the same Scheduler: not delivered, removal retried
	h.wait("p1")
	assert.Equal(t, 1, h.tr.callCount(), "not delivered again after a restart of Run")
	delay(time.Second)
	st.fail.Store(false)
	clock.Advance(time.Second)
	next("removed")
	assert.Empty(t, h.queueOf("p1"))
	require.Eventually(t, func() bool { return logs.count("INFO queue: delivered message p1 removed") == 1 }, 10*time.Second, time.Millisecond)
	assert.False(t, h.sch.removalPending("p1"))
	assert.Equal(t, 1, logs.count("ERROR"), "one ERROR")
	assert.Equal(t, 1, h.tr.callCount(), "delivered once")
}
