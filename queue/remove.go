package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// What the scheduler keeps in memory when the store refuses the last step
// of an attempt (a full disk, a store that cannot be reached), so that the
// attempt is not made again: two cases, one machinery.
//
// Removal pending: a delivered message (or one returned to its sender)
// whose Store.Remove fails stays in its queue. The scheduler keeps it as
// delivered: it never hands it to a transport again, and retries the
// removal, from whatever queue the message is in by then (an operator's
// Delete ends it).
//
// Outcome pending: a message whose outcome record fails (Store.Save of
// finish's move to deferred or dead: some recipients delivered, some
// deferred or failed, DSNs queued) is still in the store as its attempt
// record left it, those recipients pending. The scheduler keeps the
// outcome (the envelope as the attempt left it: the recipients' states,
// the DSNs queued, NextAttempt, LastError, and the queue it goes to), never
// hands the message to a transport meanwhile, and retries the record:
// from the queue the message is in now, loaded again first. When an
// operator changed it meanwhile (a requeue, a hold, a move, a release, a
// bounce: it is no longer as the attempt record left it), the operator's
// change stands (its queue, its next attempt) and only the recipients'
// outcomes are saved into it, where it is now: a delivered recipient is
// not delivered again, a failed one gets no second DSN. A message deleted
// meanwhile (not found) drops the outcome. Once recorded, the message goes
// on as if the first record had succeeded: a deferred message is retried
// at its next attempt, a dead one stays in dead. The record of a delay
// DSN (Envelope.DelayWarned, saved where the message is) is kept the same
// way when it fails, so that the DSN is not queued again.
//
// An operator's change is told by what the store had of the message when
// the outcome was made (stored: its queue, next attempt, the mark of an
// attempt under way, Returned): every operator's change (Admin) alters
// one of them.
//
// In both cases a wake-up, an operator's requeue or a restart of Run on
// the same Scheduler finds the message pending and does not deliver it
// (for an outcome it tries the record at once), and the retrier retries
// every pending step, first after min(MinBackoff, 1s), then after twice
// the last delay, up to min(MaxBackoff, 1 min), until it succeeds or Run
// stops. The first failure is logged at ERROR, the retries at DEBUG, the
// success at INFO. With a SharedStore the scheduler keeps the message's
// claim meanwhile (and the claims the store hands it again, as after an
// operator's change), so that the store hands it to no other process
// either.
//
// What it keeps is in memory: when Run stops, a last try is made, and a
// message still pending is given back (its claims released; a later Run of
// the same Scheduler goes on retrying); a new process (or Scheduler) finds
// it as its last record left it (an attempt under way: it delivers it
// again to the recipients still pending there): at least once, as after a
// crash.

// pendingStep is a message whose last step, a removal or the record of an
// outcome (an attempt's, a delay DSN's), the store refused: the scheduler
// does not deliver it while it is pending, and its retrier retries the
// step.
type pendingStep struct {
	// q is the queue the message is in, as far as the scheduler knows.
	q string
	// env is the outcome to record, the envelope as the attempt left it,
	// to be saved in queue to; nil for a removal.
	env *Envelope
	to  string
	// base is what the store had of the message when the outcome was
	// made (its attempt record, if any), to tell an operator's change.
	base stored
	// what: for a removal, what the message is ("delivered",
	// "returned"); for an outcome, what it records (recOutcome, recDelay).
	what  string
	tries int // touched only under the message's lock
	// release holds the SharedStore claims the scheduler keeps, if any.
	release []func()
}

// removeLater records that message id of queue q, delivered (what says
// so: "delivered", "returned") but not removed (err), is not to be
// delivered again, and has its removal retried.
func (s *Scheduler) removeLater(q, id, what string, err error) {
	s.keep(id, &pendingStep{q: q, what: what})
	s.log.Error(fmt.Sprintf("queue: cannot remove %s message %s; it is not delivered again, and its removal is retried", what, id),
		"id", id, "queue", q, "error", err)
}

// What recordLater records: the outcome of an attempt (finish's move to
// deferred or dead), or the delay DSN queued for a message (its
// DelayWarned, saved where it is).
const (
	recOutcome = "outcome of the attempt on"
	recDelay   = "delay DSN queued for"
)

// recordLater records that env, to be saved moved from queue base.q (what
// the store has of it) to queue to, could not be (err): the message is
// not delivered (again) until it is, and its record is retried. what says
// what env records (recOutcome, recDelay).
func (s *Scheduler) recordLater(what, to string, env *Envelope, base stored, err error) {
	s.keep(env.ID, &pendingStep{q: base.q, env: env, to: to, base: base, what: what})
	meanwhile := "it is not delivered again meanwhile"
	if what == recDelay {
		meanwhile = "it is neither delivered nor warned again meanwhile"
	}
	s.log.Error(fmt.Sprintf("queue: cannot record the %s message %s; %s, and the record is retried", what, env.ID, meanwhile),
		"id", env.ID, "queue", base.q, "to", to, "error", err)
}

// stored is what the store has of a message, as far as the scheduler
// knows: enough to tell whether an operator changed it since (a requeue,
// move, release or bounce sets its next attempt and clears the mark of an
// attempt under way; a hold, a move or a release changes its queue).
type stored struct {
	q              string
	next           time.Time
	inFlight, back bool // InFlight, Returned
}

// storedOf returns what the store has of env, in queue q.
func storedOf(q string, env *Envelope) stored {
	return stored{q: q, next: env.NextAttempt, inFlight: env.InFlight, back: env.Returned}
}

// changed reports whether env, found in queue q, is no longer as b says.
func (b stored) changed(q string, env *Envelope) bool {
	return q != b.q || !env.NextAttempt.Equal(b.next) || env.InFlight != b.inFlight || env.Returned != b.back
}

// keep makes p the pending step of message id.
func (s *Scheduler) keep(id string, p *pendingStep) {
	s.mu.Lock()
	s.pending[id] = p
	s.startRetrier()
	s.mu.Unlock()
}

// pendingOf returns the pending step of id, or nil.
func (s *Scheduler) pendingOf(id string) *pendingStep {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending[id]
}

// releaseClaim releases the SharedStore claim of id, unless a step of id
// is pending (the retrier running): the claim is then kept until the step
// succeeds or Run stops. The store may have handed the message out again
// meanwhile (an operator changed it): every claim is kept, as the latest
// is the one that holds it.
func (s *Scheduler) releaseClaim(id string, release func()) {
	s.mu.Lock()
	if p := s.pending[id]; p != nil && s.retrierOn {
		p.release = append(p.release, release)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	release()
}

// startRetrier starts the retrier when steps are pending and Run runs;
// s.mu is held.
func (s *Scheduler) startRetrier() {
	if s.retrierOn || len(s.pending) == 0 || s.runCtx == nil {
		return
	}
	s.retrierOn = true
	s.wg.Add(1)
	go s.retrier(s.runCtx)
}

// retrier retries the pending steps with backoff until none is left or
// ctx ends.
func (s *Scheduler) retrier(ctx context.Context) {
	defer s.wg.Done()
	first := min(s.cfg.MinBackoff, time.Second)
	most := max(first, min(s.cfg.MaxBackoff, time.Minute))
	delay := first
	for {
		select {
		case <-ctx.Done():
			s.retryAll(context.WithoutCancel(ctx)) // a last try
			s.stopRetrier()
			return
		case <-s.cfg.Clock.After(delay):
		}
		if s.retryAll(ctx) {
			delay = first
		} else {
			delay = min(2*delay, most)
		}
		s.mu.Lock()
		if len(s.pending) == 0 {
			s.retrierOn = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// stopRetrier gives back the claims the retrier holds, as Run stops.
func (s *Scheduler) stopRetrier() {
	s.mu.Lock()
	s.retrierOn = false
	var release []func()
	removals, outcomes := 0, 0
	for _, p := range s.pending {
		release = append(release, p.release...)
		p.release = nil
		if p.env == nil {
			removals++
		} else {
			outcomes++
		}
	}
	s.mu.Unlock()
	for _, f := range release {
		f()
	}
	if removals > 0 {
		s.log.Warn(fmt.Sprintf("queue: stopping with %d delivered messages not removed: delivered again by the next scheduler unless removed first", removals), "count", removals)
	}
	if outcomes > 0 {
		s.log.Warn(fmt.Sprintf("queue: stopping with %d outcomes not recorded: their messages are taken up again by the next scheduler as their last records left them (delivered recipients pending there delivered again) unless recorded first", outcomes), "count", outcomes)
	}
}

// retryAll tries each pending step once and reports whether one
// succeeded.
func (s *Scheduler) retryAll(ctx context.Context) bool {
	s.mu.Lock()
	ids := slices.Sorted(maps.Keys(s.pending))
	s.mu.Unlock()
	done := false
	for _, id := range ids {
		unlock, err := s.st.Lock(ctx, id)
		if err != nil {
			continue
		}
		if s.retry(ctx, id) {
			done = true
		}
		unlock()
	}
	return done
}

// retry tries the pending step of id once, the caller holding its lock,
// and reports whether it is done.
func (s *Scheduler) retry(ctx context.Context, id string) bool {
	s.mu.Lock()
	p := s.pending[id]
	s.mu.Unlock()
	if p == nil {
		return false
	}
	if p.env == nil {
		return s.retryRemoval(ctx, id, p)
	}
	return s.retryOutcome(ctx, id, p)
}

// done ends the pending step p of id, releasing the claims kept for it.
func (s *Scheduler) done(id string, p *pendingStep) {
	s.mu.Lock()
	if s.pending[id] == p {
		delete(s.pending, id)
	}
	release := p.release
	p.release = nil
	s.mu.Unlock()
	for _, f := range release {
		f()
	}
}

// retryRemoval tries to remove id once and reports whether it is gone.
// A message moved meanwhile (an operator's change) is removed from where
// it is now: it was delivered.
func (s *Scheduler) retryRemoval(ctx context.Context, id string, p *pendingStep) bool {
	err := s.st.Remove(ctx, p.q, id)
	if errors.Is(err, ErrNotFound) {
		var q string
		var m *policy.Message
		q, _, m, err = s.st.Load(id)
		if m != nil {
			m.Close()
		}
		switch {
		case errors.Is(err, ErrNotFound):
			err = nil // deleted meanwhile
		case q != "":
			p.q = q
			err = s.st.Remove(ctx, q, id)
		}
	}
	p.tries++
	if err != nil {
		s.log.Debug("queue: removal of a delivered message failed again", "id", id, "queue", p.q, "tries", p.tries, "error", err)
		return false
	}
	s.done(id, p)
	s.log.Info(fmt.Sprintf("queue: %s message %s removed after %d more tries", p.what, id, p.tries), "id", id, "tries", p.tries)
	return true
}

// retryOutcome tries to record the outcome p of id's last attempt once,
// and reports whether it is recorded (or dropped, the message being gone).
// The message is loaded first: when it is no longer as the attempt record
// left it (an operator changed it), the recipients' outcomes are saved
// into it where it is now (see mergeOutcome); otherwise the outcome is
// saved as it is, moved to its queue.
func (s *Scheduler) retryOutcome(ctx context.Context, id string, p *pendingStep) bool {
	p.tries++
	q, cur, m, err := s.st.Load(id)
	if m != nil {
		m.Close()
	}
	switch {
	case errors.Is(err, ErrNotFound):
		s.done(id, p)
		s.log.Info(fmt.Sprintf("queue: %s message %s dropped: the message was removed meanwhile", p.what, id), "id", id, "tries", p.tries)
		return true
	case errors.Is(err, ErrCorrupt):
		// Unreadable now: the outcome cannot go into it. work sets it
		// aside (or the store gives it back with a SharedStore).
		s.done(id, p)
		s.log.Warn(fmt.Sprintf("queue: %s message %s dropped: its entry cannot be read", p.what, id), "id", id, "queue", q, "error", err)
		s.retryAt(id, s.cfg.Clock.Now())
		return true
	case err != nil:
		s.log.Debug("queue: record of an outcome failed again", "id", id, "queue", p.q, "record", p.what, "tries", p.tries, "error", err)
		return false
	}
	env, from, to := p.env, p.q, p.to
	changed := p.base.changed(q, cur)
	if changed {
		mergeOutcome(cur, p.env)
		env, from, to = cur, q, q
	} else {
		// The entry may have changed since the failed save (a spool's
		// append cut short): its end is read again.
		env.end = 0
	}
	if err := s.st.Save(ctx, env, from, to, nil); err != nil {
		s.log.Debug("queue: record of an outcome failed again", "id", id, "queue", from, "record", p.what, "tries", p.tries, "error", err)
		return false
	}
	s.done(id, p)
	now := s.cfg.Clock.Now()
	if changed {
		s.log.Info(fmt.Sprintf("queue: %s message %s recorded after %d more tries, into the message as it is now, in %s (changed meanwhile: an operator's change stands)", p.what, id, p.tries, to),
			"id", id, "queue", to, "tries", p.tries)
		if to == Working || to == Deliver || to == Deferred {
			s.retryAt(id, s.wakeAt(env, now))
		}
		return true
	}
	s.log.Info(fmt.Sprintf("queue: %s message %s recorded after %d more tries", p.what, id, p.tries), "id", id, "queue", to, "tries", p.tries)
	s.movedOn(to, env, now)
	return true
}

// mergeOutcome copies into cur, the envelope of a message an operator
// changed while the outcome out of its last attempt was pending, what the
// attempt decided: each recipient's state, reply and DSN mark where the
// attempt ended it (delivered, failed) or cur still has it pending, the
// last delay DSN's time and the last error. The rest is the operator's:
// the queue, the next attempt, a bounce's failures, the postq state.
func mergeOutcome(cur, out *Envelope) {
	for i := range min(len(cur.Rcpts), len(out.Rcpts)) {
		if out.Rcpts[i].State != RcptPending || cur.Rcpts[i].State == RcptPending {
			cur.Rcpts[i] = out.Rcpts[i]
		}
	}
	if out.DelayWarned.After(cur.DelayWarned) {
		cur.DelayWarned = out.DelayWarned
	}
	cur.LastError = out.LastError
	cur.InFlight, cur.Crashes = false, 0 // the attempt finished
}
