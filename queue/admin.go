package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// Admin is the operators' view of a queue: list, show, read, hold,
// release, bounce, requeue, move and delete messages, over any Store (the
// admin API of queue/admin and the doe-family queue command use it). *Spool
// has the same methods, through an Admin of its own. Set the fields, then
// use it; they must not change once it is in use. Its methods are safe
// for concurrent use, also while a Scheduler runs on the store: a change
// waits while a delivery attempt of the message is under way in this
// process (Store.Lock).
//
// # Configuration and logging
//
// Admin is configured by its fields (Store required; Clock nil means the
// real clock). It logs nothing: every outcome is its methods' result.
type Admin struct {
	// Store holds the messages; required.
	Store Store
	// Clock gives the time set as a requeued message's next attempt. Nil
	// means the real clock.
	Clock Clock
}

func (a *Admin) now() time.Time {
	if a.Clock == nil {
		return time.Now()
	}
	return a.Clock.Now()
}

// Entry is one message of a queue as List reports it. Envelope is nil and
// Err set when the envelope cannot be read.
type Entry struct {
	ID       string
	Queue    string
	Envelope *Envelope
	Err      error
}

// Queues lists the queues (see Store.Queues).
func (a *Admin) Queues() ([]string, error) { return a.Store.Queues() }

// IDs lists the message IDs of queue q.
func (a *Admin) IDs(q string) ([]string, error) { return a.Store.IDs(q) }

// List returns the messages of queue q, oldest first.
func (a *Admin) List(q string) ([]Entry, error) {
	ids, err := a.Store.IDs(q)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(ids))
	for _, id := range ids {
		lq, env, err := a.envelope(id)
		if errors.Is(err, ErrNotFound) || err == nil && lq != q {
			continue // moved meanwhile
		}
		out = append(out, Entry{ID: id, Queue: q, Envelope: env, Err: err})
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if a.Envelope != nil && b.Envelope != nil {
			if c := a.Envelope.Received.Compare(b.Envelope.Received); c != 0 {
				return c
			}
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// envelope returns the queue and envelope of id.
func (a *Admin) envelope(id string) (string, *Envelope, error) {
	q, env, m, err := a.Store.Load(id)
	if err != nil {
		return q, nil, err
	}
	m.Close()
	return q, env, nil
}

// Item is one message as Show reports it.
type Item struct {
	Queue    string
	Envelope *Envelope
	Header   *policy.Header
}

// Show returns the queue, envelope and header of message id.
func (a *Admin) Show(id string) (*Item, error) {
	q, env, m, err := a.Store.Load(id)
	if err != nil {
		return nil, err
	}
	h := m.Header
	m.Close()
	return &Item{Queue: q, Envelope: env, Header: h}, nil
}

// ReadMessage returns message id as it is delivered (with the header
// edits of the postq rules); the caller closes it. With a *Spool the
// message stays readable until closed even if it is delivered or deleted
// meanwhile.
func (a *Admin) ReadMessage(id string) (io.ReadCloser, error) {
	_, _, m, err := a.Store.Load(id)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{m.Reader(), m}, nil
}

// locked waits for message id's lock (held during a delivery attempt) and
// returns its queue and envelope, with the unlock to call.
func (a *Admin) locked(ctx context.Context, id string) (string, *Envelope, func(), error) {
	unlock, err := a.Store.Lock(ctx, id)
	if err != nil {
		return "", nil, nil, err
	}
	q, env, err := a.envelope(id)
	if err != nil {
		unlock()
		return q, nil, nil, err
	}
	return q, env, unlock, nil
}

// Requeue schedules message id for delivery now: a deferred message (or a
// dead one, whose failed recipients are tried again) goes to deliver, or to
// working when its postq rules have not run yet. It waits while a delivery
// attempt of the message is under way.
func (a *Admin) Requeue(ctx context.Context, id string) error {
	q, env, unlock, err := a.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	switch q {
	case Deferred, Dead, Working, Deliver:
	case Hold:
		return fmt.Errorf("%w: cannot requeue from %s (use Release)", ErrBadQueue, q)
	default:
		if strings.HasPrefix(q, QuarantinePrefix) {
			return fmt.Errorf("%w: cannot requeue from %s (use Release)", ErrBadQueue, q)
		}
		return fmt.Errorf("%w: cannot requeue from %s (use Move)", ErrBadQueue, q)
	}
	if q == Dead {
		for i := range env.Rcpts {
			if env.Rcpts[i].State == RcptFailed {
				env.Rcpts[i].State, env.Rcpts[i].DSN = RcptPending, false
			}
		}
	}
	env.NextAttempt = a.now()
	env.InFlight, env.Crashes = false, 0 // an operator's retry starts afresh
	to := Deliver
	if !env.PostQDone {
		to = Working
	}
	return a.save(ctx, env, q, to)
}

// save stores env, moved from q to "to" (the store reports it to the
// scheduler when it is due there: see Store.Watch).
func (a *Admin) save(ctx context.Context, env *Envelope, q, to string) error {
	return a.Store.Save(ctx, env, q, to, nil)
}

// Move moves message id to queue to (working, deliver, deferred, dead or
// quarantine/<name>), for example to release it from quarantine: to
// working runs the postq rules again (on the message as received: header
// edits of an earlier run are dropped), to deliver skips them. It waits while a
// delivery attempt of the message is under way.
func (a *Admin) Move(ctx context.Context, id, to string) error {
	if !validQueue(to) {
		return fmt.Errorf("%w: %q", ErrBadQueue, to)
	}
	if to == Corrupt {
		return fmt.Errorf("%w: cannot move into %s", ErrBadQueue, to)
	}
	q, env, unlock, err := a.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return a.move(ctx, q, env, to)
}

// validQueue reports whether q names a queue.
func validQueue(q string) bool {
	if slices.Contains(baseQueues, q) {
		return true
	}
	name, ok := strings.CutPrefix(q, QuarantinePrefix)
	return ok && validID(name)
}

// move moves env, read from queue q, to queue to, as Move does; the
// caller holds its lock.
func (a *Admin) move(ctx context.Context, q string, env *Envelope, to string) error {
	if to == Deliver || to == Working || to == Deferred {
		env.NextAttempt = a.now()
		env.InFlight, env.Crashes = false, 0 // an operator's retry starts afresh
		if !env.pending() {
			return fmt.Errorf("queue: %s has no recipient left to deliver", env.ID)
		}
	}
	switch to {
	case Deliver:
		env.PostQDone = true // released as is: the postq rules do not run (again)
	case Working:
		// The postq rules run again, on the message as received: the
		// header edits of an earlier run (a DKIM-Signature) are dropped,
		// or the message would get them twice.
		env.PostQDone = false
		env.Head, env.BodyOff = nil, 0
	}
	return a.save(ctx, env, q, to)
}

// Delete removes message id from whatever queue holds it. It waits while a
// delivery attempt of the message is under way. With a Store that is a
// DurableRemover (the spool, queue/journal) the deletion is durable when
// it returns.
func (a *Admin) Delete(ctx context.Context, id string) error {
	unlock, err := a.Store.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	q, _, err := a.envelope(id)
	if err != nil && (q == "" || !errors.Is(err, ErrCorrupt)) {
		return err // an unreadable entry (corrupt) can be deleted
	}
	if sp, ok := a.Store.(DurableRemover); ok {
		return sp.RemoveDurably(ctx, q, id)
	}
	return a.Store.Remove(ctx, q, id)
}

// DurableRemover is a Store whose Remove is not durable at once (it need
// not be, after a delivery: the message would only be delivered again)
// but that can remove durably, as an operator's Delete wants: a deleted
// message must not come back after a crash.
type DurableRemover interface {
	// RemoveDurably is Remove, returning once the removal is durable.
	RemoveDurably(ctx context.Context, q, id string) error
}

// RemoveDurably implements DurableRemover.
func (s *Spool) RemoveDurably(ctx context.Context, q, id string) error { return s.remove(ctx, q, id) }

// admin returns the Admin of the spool, which its admin methods use.
func (s *Spool) admin() *Admin { return &Admin{Store: s, Clock: s.clock} }

// List returns the messages of queue q, oldest first (see Admin.List).
func (s *Spool) List(q string) ([]Entry, error) { return s.admin().List(q) }

// Show returns the queue, envelope and header of message id (see Admin.Show).
func (s *Spool) Show(id string) (*Item, error) { return s.admin().Show(id) }

// ReadMessage returns message id as it is delivered (see
// Admin.ReadMessage); the caller closes it. The message stays readable
// until closed even if it is delivered or deleted meanwhile.
func (s *Spool) ReadMessage(id string) (io.ReadCloser, error) { return s.admin().ReadMessage(id) }

// Requeue schedules message id for delivery now (see Admin.Requeue).
func (s *Spool) Requeue(ctx context.Context, id string) error { return s.admin().Requeue(ctx, id) }

// Move moves message id to queue to (see Admin.Move).
func (s *Spool) Move(ctx context.Context, id, to string) error { return s.admin().Move(ctx, id, to) }

// Delete removes message id from whatever queue holds it (see
// Admin.Delete).
func (s *Spool) Delete(ctx context.Context, id string) error { return s.admin().Delete(ctx, id) }

// Hold moves message id to the hold queue (see Admin.Hold).
func (s *Spool) Hold(ctx context.Context, id string) error { return s.admin().Hold(ctx, id) }

// Release sends a held or quarantined message on to delivery now (see
// Admin.Release).
func (s *Spool) Release(ctx context.Context, id string) error { return s.admin().Release(ctx, id) }

// Bounce returns message id to its sender (see Admin.Bounce).
func (s *Spool) Bounce(ctx context.Context, id string) error { return s.admin().Bounce(ctx, id) }
