package queue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/mtakit/mtakit/policy"
)

// Store is the storage a Scheduler works on. *Spool, on the local
// filesystem, is the embedded one; a store on a shared engine (NATS
// JetStream, PostgreSQL) can take its place without touching the scheduler.
// Every method is safe for concurrent use, and each change is durable when
// the method returns.
type Store interface {
	// Watch registers fn to be called when a message arrives in a queue
	// (enqueued, requeued, moved); nil unregisters.
	Watch(fn func(id, queue string))
	// IDs lists the message IDs of queue q.
	IDs(q string) ([]string, error)
	// Queues lists the queues: Working, Deliver, Deferred, Hold, Dead,
	// Corrupt and every quarantine queue ("quarantine/<name>") that exists.
	Queues() ([]string, error)
	// Lock gives the caller exclusive use of message id until unlock is
	// called; it waits while another holds it, up to ctx.
	Lock(ctx context.Context, id string) (unlock func(), err error)
	// Load returns the queue, envelope and message of id; the caller
	// closes the message. An error wraps ErrNotFound when id is gone, and
	// ErrCorrupt (queue then set) when the entry cannot be read back.
	Load(id string) (queue string, env *Envelope, m *policy.Message, err error)
	// Save stores env and moves it from queue "from" to queue "to" (the
	// same to stay); a move sets env.Moved to the time of the move. When m is not nil its current content (header edits
	// included) replaces the stored message, atomically with the envelope.
	Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error
	// SaveUnsynced is Save without waiting for durability: the change is
	// visible at once and survives a crash of the process, but a crash of
	// the machine may undo it, the message coming back as it was before.
	// The scheduler records an attempt this way just before making it.
	SaveUnsynced(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error
	// Remove deletes the message env of queue q after its delivery, or
	// when its retention ran out; it need not be durable at once (a crash
	// may bring the message back).
	Remove(ctx context.Context, q string, env *Envelope) error
	// SetAside moves the unreadable entry id of queue q to the corrupt
	// queue, logging cause.
	SetAside(ctx context.Context, q, id string, cause error)
	// Add stores a new message, whose content write produces, with
	// envelope env (env.ID new) in queue q.
	Add(ctx context.Context, env *Envelope, q string, write func(io.Writer) (int64, error)) error
}

var _ Store = (*Spool)(nil)

// Watch implements Store.
func (s *Spool) Watch(fn func(id, queue string)) { s.setWake(fn) }

// IDs implements Store.
func (s *Spool) IDs(q string) ([]string, error) { return s.listIDs(q) }

// Lock implements Store.
func (s *Spool) Lock(ctx context.Context, id string) (func(), error) { return s.locks.lock(ctx, id) }

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
	if m == nil {
		return s.update(ctx, env, from, to, durable)
	}
	off, ok := storedBody(env, m)
	if !ok {
		return s.replace(ctx, env, from, to, m)
	}
	head, boff := env.Head, env.BodyOff
	var b bytes.Buffer
	m.Header.WriteTo(&b)
	if m.Size()-m.Header.Size()-m.BodySize() == 2 {
		b.WriteString("\r\n")
	}
	env.Head, env.BodyOff = b.Bytes(), off
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
	if !ok || src.env != env || off < int64(len(src.head)) {
		return 0, false
	}
	start := src.base + off - int64(len(src.head))
	if start+n != env.Size {
		return 0, false
	}
	return start, true
}

// Remove implements Store. It does not wait for a sync: a crash right
// after may bring the message back, to be delivered again (at least
// once), which the scheduler allows.
func (s *Spool) Remove(ctx context.Context, q string, env *Envelope) error {
	s.dropHot(env.ID)
	dir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	path := entryPath(dir, env.ID)
	size := env.end
	if size == 0 {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		size = st.Size()
	}
	if err := s.rec.discard(path, env.ID, size); err != nil {
		return err
	}
	s.release(env.ID)
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
