package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/mtakit/mtakit/policy"
)

// Store is the storage a Scheduler and the admin operations (Admin) work
// on: what they need, nothing of how a store keeps its messages. *Spool, on
// the local filesystem, is the embedded one; queue/jetstream keeps the queue
// on a NATS JetStream cluster shared by several processes (see SharedStore).
// The conformance suite in queue/queuetest runs against every store.
//
// A message is identified by its ID (Envelope.ID, unique in the store) and
// lives in one queue at a time: Working, Deliver, Deferred, Hold, Dead,
// Corrupt or a quarantine queue (QuarantinePrefix + name). Every method is
// safe for concurrent use, and each change is durable when the method
// returns unless its documentation says otherwise.
type Store interface {
	// Watch registers fn to be called when a message arrives in Working,
	// Deliver or Deferred ready for an attempt: enqueued (Add, and a
	// store's own accept path), or saved there (Save) with its
	// NextAttempt due (an operator's requeue, release or bounce); nil
	// unregisters. fn must not block. It may be called for other queues
	// too, which the scheduler ignores.
	Watch(fn func(id, queue string))
	// IDs lists the message IDs of queue q.
	IDs(q string) ([]string, error)
	// Queues lists the queues: Working, Deliver, Deferred, Hold, Dead,
	// Corrupt and every quarantine queue ("quarantine/<name>") that exists.
	Queues() ([]string, error)
	// Lock gives the caller exclusive use of message id in this process
	// until unlock is called; it waits while another holds it, up to ctx.
	// (Between processes sharing a store, see SharedStore.)
	Lock(ctx context.Context, id string) (unlock func(), err error)
	// Load returns the queue, envelope and message of id; the caller
	// closes the message. An error wraps ErrNotFound when id is gone,
	// ErrBadID when id is not a valid ID, and ErrCorrupt (queue then set)
	// when the entry cannot be read back.
	Load(id string) (queue string, env *Envelope, m *policy.Message, err error)
	// Save stores env and moves it from queue "from" (where Load found
	// it) to queue "to" (the same to stay); a move sets env.Moved to the
	// time of the move. When m is not nil its current content (header
	// edits included) replaces the stored message, atomically with the
	// envelope. An error wraps ErrNotFound when the message is no longer
	// in "from", and ErrBadQueue for a bad queue name.
	Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error
	// SaveUnsynced is Save without waiting for durability: the record of
	// an attempt about to start (Envelope.InFlight set). The change is
	// visible at once and survives a crash of the process, but a crash of
	// the machine may undo it, the message coming back as it was before.
	SaveUnsynced(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error
	// Remove deletes message id of queue q (delivered, deleted by an
	// operator, or its retention ran out). It need not be durable at
	// once: a crash may bring the message back, to be delivered again (at
	// least once). When it fails after a delivery, the scheduler keeps
	// the message from delivery and calls it again later.
	Remove(ctx context.Context, q, id string) error
	// SetAside moves the unreadable entry id of queue q to the corrupt
	// queue, logging cause.
	SetAside(ctx context.Context, q, id string, cause error)
	// Add stores a new message, whose content write produces, with
	// envelope env (env.ID new, at least one recipient) in queue q: the
	// DSNs the scheduler generates.
	Add(ctx context.Context, env *Envelope, q string, write func(io.Writer) (int64, error)) error
}

// SharedStore is a Store whose messages the schedulers of several
// processes share (queue/jetstream): the store, not the scheduler, decides
// which process works on which message and when.
//
// Its Watch reports only the messages this process is to work on now,
// each handed to one process at a time: at once those waiting when Watch
// is called, then as they come due. A message the scheduler leaves without
// moving it out of Working, Deliver or Deferred comes back through Watch
// (on this process or another) when its Envelope.NextAttempt is due, and a
// message whose process stops comes back on another. The scheduler
// therefore scans no queue when it starts and keeps no retry timers.
type SharedStore interface {
	Store
	// Claim is called by the scheduler, with Lock held, before it works
	// on message id, which Watch gave it. ok false means this process no
	// longer holds it (an operator's change, or it went to another
	// process): the scheduler leaves it. Otherwise the scheduler calls
	// release when done with it; a message not saved or removed meanwhile
	// is handed out again when its NextAttempt is due. A delivered message
	// whose Remove failed, or a message whose outcome record (Save after
	// an attempt) failed, keeps its claim (release is not called) while
	// the scheduler retries the removal or the record, until Run stops;
	// so do the claims of it the store hands out meanwhile.
	Claim(id string) (release func(), ok bool)
}

var _ Store = (*Spool)(nil)

// Watch implements Store.
func (s *Spool) Watch(fn func(id, queue string)) { s.setWake(fn) }

// IDs implements Store.
func (s *Spool) IDs(q string) ([]string, error) { return s.listIDs(q) }

// Lock implements Store.
func (s *Spool) Lock(ctx context.Context, id string) (func(), error) { return s.locks.Lock(ctx, id) }

// Load implements Store.
func (s *Spool) Load(id string) (string, *Envelope, *policy.Message, error) {
	if h, ok := s.takeHot(id); ok {
		env, m, err := s.loadHot(id, h)
		if err == nil {
			return Working, env, m, nil // only Working entries are kept
		}
	}
	q, err := s.locate(id)
	if err != nil {
		return "", nil, nil, err
	}
	env, m, err := s.loadEntry(q, id)
	if err != nil {
		return q, nil, nil, err
	}
	return q, env, m, nil
}

// Save implements Store. The envelope is appended to the entry; header
// edits of m go into the envelope (Envelope.Head), so the message is not
// copied. Only when m's body is no longer the stored one (a rule replaced
// it) is a new entry file written, which takes the old one's place
// atomically: a crash leaves either the old envelope and message or the
// new ones, never a mix.
func (s *Spool) Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error {
	return s.save(ctx, env, from, to, m, true)
}

// SaveUnsynced implements Store. The append and the rename are done at
// once, in the page cache; the next durable change of the entry (or any
// sync of the filesystem) makes them durable too. A message whose body a
// rule replaced is still saved durably (a new entry file).
func (s *Spool) SaveUnsynced(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error {
	return s.save(ctx, env, from, to, m, false)
}

func (s *Spool) save(ctx context.Context, env *Envelope, from, to string, m *policy.Message, durable bool) error {
	if err := s.saveEntry(ctx, env, from, to, m, durable); err != nil {
		return err
	}
	if runnable(to) && !env.NextAttempt.After(s.now()) {
		s.notify(env.ID, to)
	}
	return nil
}

// runnable reports whether the scheduler works on the messages of queue q.
func runnable(q string) bool { return q == Working || q == Deliver || q == Deferred }

func (s *Spool) saveEntry(ctx context.Context, env *Envelope, from, to string, m *policy.Message, durable bool) error {
	if m == nil {
		return s.update(ctx, env, from, to, durable)
	}
	off, ok := storedBody(env, m)
	if !ok {
		return s.replace(ctx, env, from, to, m)
	}
	head, boff := env.Head, env.BodyOff
	env.Head, env.BodyOff = HeadBytes(m), off
	if err := s.update(ctx, env, from, to, durable); err != nil {
		env.Head, env.BodyOff = head, boff
		return err
	}
	return nil
}

// storedBody reports whether the body of m is the body of env's stored
// message, unchanged, and where it starts there.
func storedBody(env *Envelope, m *policy.Message) (int64, bool) {
	sr, ok := m.Body().(*io.SectionReader)
	if !ok {
		return 0, false
	}
	outer, off, n := sr.Outer()
	src, ok := outer.(*msgSrc)
	if !ok || src.env != env {
		return 0, false
	}
	start, ok := src.InStored(off)
	if !ok || start+n != env.Size {
		return 0, false
	}
	return start, true
}

// Remove implements Store. It does not wait for a sync: a crash right
// after may bring the message back, to be delivered again (at least
// once), which the scheduler allows.
func (s *Spool) Remove(ctx context.Context, q, id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q", ErrBadID, id)
	}
	s.dropHot(id)
	dir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	path := entryPath(dir, id)
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return err
	}
	if err := s.rec.discard(path, id, st.Size()); err != nil {
		return err
	}
	s.release(id)
	return nil
}

// SetAside implements Store.
func (s *Spool) SetAside(ctx context.Context, q, id string, cause error) {
	s.setAside(ctx, q, id, cause)
}

// Add implements Store.
func (s *Spool) Add(ctx context.Context, env *Envelope, q string, write func(io.Writer) (int64, error)) error {
	if !validID(env.ID) {
		return fmt.Errorf("%w: %q", ErrBadID, env.ID)
	}
	if len(env.Rcpts) == 0 {
		return ErrNoRcpts
	}
	return s.enqueue(ctx, env, q, write, s.cs)
}
