package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// Entry is one message of a queue as List reports it. Envelope is nil and
// Err set when the envelope cannot be read.
type Entry struct {
	ID       string
	Queue    string
	Envelope *Envelope
	Err      error
}

// List returns the messages of queue q, oldest first.
func (s *Spool) List(q string) ([]Entry, error) {
	ids, err := s.listIDs(q)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(ids))
	for _, id := range ids {
		env, err := s.readEnvelope(q, id)
		if errors.Is(err, ErrNotFound) {
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

// Item is one message as Show reports it.
type Item struct {
	Queue    string
	Envelope *Envelope
	Header   *policy.Header
}

// Show returns the queue, envelope and header of message id.
func (s *Spool) Show(id string) (*Item, error) {
	q, err := s.locate(id)
	if err != nil {
		return nil, err
	}
	env, m, err := s.loadEntry(q, id)
	if err != nil {
		return nil, err
	}
	h := m.Header
	m.Close()
	return &Item{Queue: q, Envelope: env, Header: h}, nil
}

// Requeue schedules message id for delivery now: a deferred message (or a
// dead one, whose failed recipients are tried again) goes to deliver, or to
// working when its postq rules have not run yet. It waits while a delivery
// attempt of the message is under way.
func (s *Spool) Requeue(ctx context.Context, id string) error {
	q, unlock, err := s.lockLocated(ctx, id)
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
	env, err := s.readEnvelope(q, id)
	if err != nil {
		return err
	}
	if q == Dead {
		for i := range env.Rcpts {
			if env.Rcpts[i].State == RcptFailed {
				env.Rcpts[i].State, env.Rcpts[i].DSN = RcptPending, false
			}
		}
	}
	env.NextAttempt = s.now()
	env.InFlight, env.Crashes = false, 0 // an operator's retry starts afresh
	to := Deliver
	if !env.PostQDone {
		to = Working
	}
	if err := s.update(ctx, env, q, to, true); err != nil {
		return err
	}
	s.notify(id, to)
	return nil
}

// Move moves message id to queue to (working, deliver, deferred, dead or
// quarantine/<name>), for example to release it from quarantine: to
// working runs the postq rules again (on the message as received: header
// edits of an earlier run are dropped), to deliver skips them. It waits while a
// delivery attempt of the message is under way.
func (s *Spool) Move(ctx context.Context, id, to string) error {
	if _, err := s.queueDir(to); err != nil {
		return err
	}
	if to == Corrupt {
		return fmt.Errorf("%w: cannot move into %s", ErrBadQueue, to)
	}
	q, unlock, err := s.lockLocated(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	env, err := s.readEnvelope(q, id)
	if err != nil {
		return err
	}
	return s.move(ctx, q, env, to)
}

// move moves env, read from queue q, to queue to, as Move does; the
// caller holds its lock.
func (s *Spool) move(ctx context.Context, q string, env *Envelope, to string) error {
	id := env.ID
	if to == Deliver || to == Working || to == Deferred {
		env.NextAttempt = s.now()
		env.InFlight, env.Crashes = false, 0 // an operator's retry starts afresh
		if !env.pending() {
			return fmt.Errorf("queue: %s has no recipient left to deliver", id)
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
	if err := s.update(ctx, env, q, to, true); err != nil {
		return err
	}
	s.notify(id, to)
	return nil
}

// Delete removes message id from whatever queue holds it. It waits while a
// delivery attempt of the message is under way.
func (s *Spool) Delete(ctx context.Context, id string) error {
	q, unlock, err := s.lockLocated(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return s.remove(ctx, q, id)
}

// lockLocated waits for message id's lock (held during a delivery attempt)
// and returns the queue that holds it, with the unlock to call.
func (s *Spool) lockLocated(ctx context.Context, id string) (string, func(), error) {
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return "", nil, err
	}
	q, err := s.locate(id)
	if err != nil {
		unlock()
		return "", nil, err
	}
	return q, unlock, nil
}
