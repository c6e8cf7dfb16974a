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

// A delivered message whose removal fails (Store.Remove returns an error:
// a full disk, a store that cannot be reached) stays in its queue. The
// scheduler then keeps it as delivered, removal pending: it never hands
// it to a transport again (a wake-up, an operator's requeue or a restart
// of Run on the same Scheduler finds it pending and leaves it), and its
// remover retries the removal, first after min(MinBackoff, 1s), then
// after twice the last delay, up to min(MaxBackoff, 1 min), until it
// succeeds or Run stops. The first failure is logged at ERROR, the
// retries at DEBUG, the removal at INFO. With a SharedStore the scheduler
// keeps the message's claim meanwhile, so that the store hands it to no
// other process either.
//
// What it keeps is in memory: when Run stops, a last try is made, and a
// message still not removed is given back (its claim released); a new
// process (or Scheduler) finds it as the last record left it, an attempt
// under way, and delivers it again: at least once, as after a crash.

// removal is a message whose removal is pending.
type removal struct {
	q     string // its queue, as far as the remover knows
	tries int    // touched only under the message's lock
	// release is the SharedStore claim the remover holds, if any.
	release func()
}

// removeLater records that message id of queue q, delivered (what says
// so: "delivered", "returned") but not removed (err), is not to be
// delivered again, and has its removal retried.
func (s *Scheduler) removeLater(q, id, what string, err error) {
	s.mu.Lock()
	s.removing[id] = &removal{q: q}
	s.startRemover()
	s.mu.Unlock()
	s.log.Error(fmt.Sprintf("queue: cannot remove %s message %s; it is not delivered again, and its removal is retried", what, id),
		"id", id, "queue", q, "error", err)
}

// removalPending reports whether id is delivered and its removal pending.
func (s *Scheduler) removalPending(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removing[id] != nil
}

// releaseClaim releases the SharedStore claim of id, unless id's removal
// just became pending: the remover then keeps the claim until it is
// removed.
func (s *Scheduler) releaseClaim(id string, release func()) {
	s.mu.Lock()
	if r := s.removing[id]; r != nil && r.release == nil && s.removerOn {
		r.release = release
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	release()
}

// startRemover starts the remover when removals are pending and Run runs;
// s.mu is held.
func (s *Scheduler) startRemover() {
	if s.removerOn || len(s.removing) == 0 || s.runCtx == nil {
		return
	}
	s.removerOn = true
	s.wg.Add(1)
	go s.remover(s.runCtx)
}

// remover retries the pending removals with backoff until none is left
// or ctx ends.
func (s *Scheduler) remover(ctx context.Context) {
	defer s.wg.Done()
	first := min(s.cfg.MinBackoff, time.Second)
	most := max(first, min(s.cfg.MaxBackoff, time.Minute))
	delay := first
	for {
		select {
		case <-ctx.Done():
			s.retryRemovals(context.WithoutCancel(ctx)) // a last try
			s.stopRemover()
			return
		case <-s.cfg.Clock.After(delay):
		}
		if s.retryRemovals(ctx) {
			delay = first
		} else {
			delay = min(2*delay, most)
		}
		s.mu.Lock()
		if len(s.removing) == 0 {
			s.removerOn = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// stopRemover gives back the claims the remover holds, as Run stops.
func (s *Scheduler) stopRemover() {
	s.mu.Lock()
	s.removerOn = false
	var release []func()
	for _, r := range s.removing {
		if r.release != nil {
			release = append(release, r.release)
			r.release = nil
		}
	}
	left := len(s.removing)
	s.mu.Unlock()
	for _, f := range release {
		f()
	}
	if left > 0 {
		s.log.Warn(fmt.Sprintf("queue: stopping with %d delivered messages not removed: delivered again by the next scheduler unless removed first", left), "count", left)
	}
}

// retryRemovals tries each pending removal once and reports whether one
// succeeded.
func (s *Scheduler) retryRemovals(ctx context.Context) bool {
	s.mu.Lock()
	ids := slices.Sorted(maps.Keys(s.removing))
	s.mu.Unlock()
	removed := false
	for _, id := range ids {
		if s.retryRemoval(ctx, id) {
			removed = true
		}
	}
	return removed
}

// retryRemoval tries to remove id once and reports whether it is gone.
// A message moved meanwhile (an operator's change) is removed from where
// it is now: it was delivered.
func (s *Scheduler) retryRemoval(ctx context.Context, id string) bool {
	unlock, err := s.st.Lock(ctx, id)
	if err != nil {
		return false
	}
	defer unlock()
	s.mu.Lock()
	r := s.removing[id]
	s.mu.Unlock()
	if r == nil {
		return false
	}
	err = s.st.Remove(ctx, r.q, id)
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
			r.q = q
			err = s.st.Remove(ctx, q, id)
		}
	}
	r.tries++
	if err != nil {
		s.log.Debug("queue: removal of a delivered message failed again", "id", id, "queue", r.q, "tries", r.tries, "error", err)
		return false
	}
	s.mu.Lock()
	delete(s.removing, id)
	release := r.release
	s.mu.Unlock()
	if release != nil {
		release()
	}
	s.log.Info(fmt.Sprintf("queue: delivered message %s removed after %d more tries", id, r.tries), "id", id, "tries", r.tries)
	return true
}
