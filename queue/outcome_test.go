package queue

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// saveFails is a Store whose Save fails while fail is set, telling each
// call; SaveUnsynced (an attempt's record) goes through.
type saveFails struct {
	Store
	fail  atomic.Bool
	calls chan error
}

func (r *saveFails) Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error {
	err := errors.New("no space left on device")
	if !r.fail.Load() {
		err = r.Store.Save(ctx, env, from, to, m)
	}
	r.calls <- err
	return err
}

// outcomeHarness is a harness whose scheduler saves through a saveFails,
// its clock telling each After, logging to logs; c@example.com is
// deferred at every attempt, any other recipient delivered.
type outcomeHarness struct {
	*harness
	st     *saveFails
	clock  *afterClock
	logs   *logRecords
	failed func(what string)
	saved  func(what string)
	delay  func(want time.Duration)
	// delayed waits for a timer of want, skipping others.
	delayed func(want time.Duration)
}

func newOutcomeHarness(t *testing.T, cfg Config) *outcomeHarness {
	h := newHarness(t, "", Config{})
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if rcpt == "c@example.com" {
			return policy.Reply{Code: 451, Enhanced: "4.2.2", Text: "mailbox full"}
		}
		return policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	}
	o := &outcomeHarness{
		harness: h,
		st:      &saveFails{Store: h.sp, calls: make(chan error, 100)},
		clock:   &afterClock{fakeClock: h.clock, afters: make(chan time.Duration, 100)},
		logs:    &logRecords{},
	}
	o.st.fail.Store(true)
	cfg.Transports = map[string]Transport{"fake": h.tr}
	cfg.DefaultRoute = h.sch.cfg.DefaultRoute
	cfg.Jitter, cfg.Retention = -1, -1
	cfg.Hostname = "mx.test"
	cfg.Clock, cfg.Logger = o.clock, slog.New(o.logs)
	h.sch = NewScheduler(o.st, cfg)
	h.sch.afterWork = func(id string) { h.done <- id }
	call := func(what string, ok bool) {
		t.Helper()
		select {
		case err := <-o.st.calls:
			if ok {
				require.NoError(t, err, what)
			} else {
				require.Error(t, err, what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no Save call: %s", what)
		}
	}
	o.failed = func(what string) { t.Helper(); call(what, false) }
	o.saved = func(what string) { t.Helper(); call(what, true) }
	o.delay = func(want time.Duration) {
		t.Helper()
		select {
		case d := <-o.clock.afters:
			require.Equal(t, want, d)
		case <-time.After(10 * time.Second):
			t.Fatalf("no timer set (want %v)", want)
		}
	}
	o.delayed = func(want time.Duration) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case d := <-o.clock.afters:
				if d == want {
					return
				}
			case <-timeout:
				t.Fatalf("no timer of %v set", want)
			}
		}
	}
	return o
}

// TestOutcomePending: a message delivered to one recipient and deferred
// for the other, whose outcome record fails, is not delivered again (a
// wake-up, a restart of Run); the record is retried after 1s, 2s...
// (MinBackoff 5 min: the first retry after 1s), logged at ERROR once,
// DEBUG after, INFO when it is recorded; Run stopping makes a last try
// and says what is left (WARN); the next Run goes on. Once recorded the
// message is deferred as the attempt left it, and its next attempt tries
// the deferred recipient only.
func TestOutcomePending(t *testing.T) {
	h := newOutcomeHarness(t, Config{})
	h.start()
	start := h.clock.Now()
	h.enqueue(newTx("p1", "a@example.org", "b@example.com", "c@example.com"), testMsg)
	h.failed("the outcome after the attempt")
	h.wait("p1")
	assert.Equal(t, 1, h.logs.count("ERROR queue: cannot record the outcome of the attempt on message p1"))
	assert.Equal(t, Deliver, h.queueOf("p1"), "as its attempt record left it")
	assert.True(t, h.sch.outcomePending("p1"))

	h.delay(time.Second)
	h.sch.wake("p1", Deliver) // woken again (an operator's requeue, say)
	h.failed("tried at the wake-up")
	h.wait("p1")
	assert.Equal(t, 1, h.tr.callCount(), "not delivered again")
	h.clock.Advance(time.Second)
	h.failed("first retry")
	h.delay(2 * time.Second)
	assert.Equal(t, 2, h.logs.count("DEBUG queue: record of an outcome failed again"))
	assert.Equal(t, 1, h.logs.count("ERROR"), "one ERROR")

	h.stop() // a last try, then the message is given back
	h.failed("last try")
	assert.Equal(t, 1, h.logs.count("WARN queue: stopping with 1 outcomes not recorded"))
	h.start() // the same Scheduler: not delivered, the record retried
	h.failed("tried at the restart")
	h.wait("p1")
	assert.Equal(t, 1, h.tr.callCount(), "not delivered again after a restart of Run")
	h.delay(time.Second)
	h.st.fail.Store(false)
	h.clock.Advance(time.Second)
	h.saved("recorded")
	next := h.clock.Now()
	require.Eventually(t, func() bool {
		return h.logs.count("INFO queue: outcome of the attempt on message p1 recorded after 5 more tries") == 1
	}, 10*time.Second, time.Millisecond)
	assert.False(t, h.sch.outcomePending("p1"))
	assert.Equal(t, 1, h.logs.count("ERROR"), "one ERROR")
	assert.Equal(t, Deferred, h.queueOf("p1"))
	env := h.envelope("p1")
	assert.Equal(t, []string{RcptDelivered, RcptPending}, []string{env.Rcpts[0].State, env.Rcpts[1].State})
	assert.False(t, env.InFlight)
	assert.Equal(t, 1, env.Attempts)
	assert.Equal(t, start.Add(5*time.Minute), env.NextAttempt, "the next attempt as the attempt set it")
	assert.Contains(t, env.LastError, "c@example.com")

	// Deferred, it is tried again at its next attempt: c only.
	h.delay(env.NextAttempt.Sub(next))
	h.setClock(env.NextAttempt)
	h.saved("the outcome of the second attempt")
	h.wait("p1")
	assert.Equal(t, []string{"b@example.com", "c@example.com", "c@example.com"}, rcptsOf(h.tr.deliveries()))
}

// TestOutcomePendingOperator: an operator's requeue of a message whose
// outcome is pending, in place (deliver to deliver), stands: the
// outcome goes into the requeued message, which is tried at once, for
// its deferred recipient only. A message deleted meanwhile drops its
// outcome.
func TestOutcomePendingOperator(t *testing.T) {
	ctx := context.Background()
	h := newOutcomeHarness(t, Config{})
	h.start()
	h.enqueue(newTx("p1", "a@example.org", "b@example.com", "c@example.com"), testMsg)
	h.failed("the outcome after the attempt")
	h.wait("p1")
	h.delay(time.Second)
	require.NoError(t, h.sp.Requeue(ctx, "p1")) // the spool's own Save works
	h.failed("tried at the requeue's wake-up")
	h.wait("p1")
	assert.Equal(t, 1, h.tr.callCount(), "not delivered again")
	h.st.fail.Store(false)
	h.clock.Advance(time.Second)
	h.saved("recorded where the operator put it")
	h.saved("the outcome of the next attempt, made at once")
	h.wait("p1")
	assert.Equal(t, 1, h.logs.count("INFO queue: outcome of the attempt on message p1 recorded after 2 more tries, into the message as it is now, in deliver"))
	assert.Equal(t, []string{"b@example.com", "c@example.com", "c@example.com"}, rcptsOf(h.tr.deliveries()))
	assert.Equal(t, Deferred, h.queueOf("p1"))
	assert.Equal(t, 2, h.envelope("p1").Attempts)

	h.st.fail.Store(true)
	h.enqueue(newTx("p2", "a@example.org", "b@example.com", "c@example.com"), testMsg)
	h.failed("the outcome of p2 after its attempt")
	h.wait("p2")
	require.True(t, h.sch.outcomePending("p2"))
	require.NoError(t, h.sp.Delete(ctx, "p2"))
	h.delayed(time.Second) // the retrier's (p1's next attempt has its timer too)
	h.clock.Advance(time.Second)
	require.Eventually(t, func() bool { return !h.sch.outcomePending("p2") }, 10*time.Second, time.Millisecond)
	assert.Equal(t, 1, h.logs.count("INFO queue: outcome of the attempt on message p2 dropped: the message was removed meanwhile"))
	assert.Equal(t, 1, h.logs.count("ERROR queue: cannot record the outcome of the attempt on message p2"))
	assert.Empty(t, h.queueOf("p2"))
	assert.Equal(t, 3, h.tr.callCount(), "p2 delivered once")
}

// TestDelayDSNRecordPending: a delay DSN whose record (Envelope.
// DelayWarned) fails is kept the same way: a wake-up queues no second
// one, and the record lands once the store saves again.
func TestDelayDSNRecordPending(t *testing.T) {
	h := newOutcomeHarness(t, delayConfig())
	t0 := h.clock.Now()
	h.st.fail.Store(false)
	h.start()
	tx := newTx("m1", "a@example.org", "c@example.com")
	tx.Rcpts[0].Notify = []string{"DELAY", "FAILURE"}
	h.enqueue(tx, testMsg)
	h.saved("the outcome of attempt 1, at 0")
	h.wait("m1")
	h.setClock(t0.Add(3 * time.Hour))
	h.saved("the outcome of attempt 2, at 3h")
	h.wait("m1")
	h.st.fail.Store(true)
	h.setClock(t0.Add(4 * time.Hour)) // the delay DSN is due
	h.failed("the delay DSN's record")
	h.wait("m1")
	h.waitOther("m1") // the delay DSN, delivered
	assert.Equal(t, 1, h.logs.count("ERROR queue: cannot record the delay DSN queued for message m1"))
	h.sch.wake("m1", Deferred)
	h.failed("tried at the wake-up")
	h.wait("m1")
	assert.Len(t, delayedDSNs(t, h.tr.deliveries()), 1, "no second delay DSN")

	h.st.fail.Store(false)
	h.delayed(time.Second)
	h.clock.Advance(time.Second)
	h.saved("recorded")
	require.Eventually(t, func() bool {
		return h.logs.count("INFO queue: delay DSN queued for message m1 recorded after 2 more tries") == 1
	}, 10*time.Second, time.Millisecond)
	env := h.envelope("m1")
	assert.Equal(t, t0.Add(4*time.Hour), env.DelayWarned)
	assert.Equal(t, Deferred, h.queueOf("m1"))
	h.setClock(t0.Add(9 * time.Hour)) // attempt 3; the next delay DSN is due at 28h
	h.saved("the outcome of attempt 3, at 9h")
	h.wait("m1")
	assert.Len(t, delayedDSNs(t, h.tr.deliveries()), 1, "no second delay DSN")
	assert.Equal(t, 3, h.envelope("m1").Attempts)
}
