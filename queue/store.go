package queue

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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
	// Lock gives the caller exclusive use of message id until unlock is
	// called; it waits while another holds it, up to ctx.
	Lock(ctx context.Context, id string) (unlock func(), err error)
	// Load returns the queue, envelope and message of id; the caller
	// closes the message. An error wraps ErrNotFound when id is gone, and
	// ErrCorrupt (queue then set) when the entry cannot be read back.
	Load(id string) (queue string, env *Envelope, m *policy.Message, err error)
	// Save stores env and moves it from queue "from" to queue "to" (the
	// same to stay). When m is not nil its current content (header edits
	// included) replaces the stored message, atomically with the envelope.
	Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error
	// Remove deletes the message env of queue q after its delivery; it
	// need not be durable at once (a crash may bring the message back).
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
	q, err := s.locate(id)
	if err != nil {
		return "", nil, nil, err
	}
	env, err := s.readEnvelope(q, id)
	if err != nil {
		return q, nil, nil, err
	}
	m, err := s.openMessage(env)
	if err != nil {
		return q, nil, nil, err
	}
	return q, env, m, nil
}

// Save implements Store. A new message content is written to a new file
// (<id>~<n>.eml) that the new envelope names, so that a crash leaves either
// the old envelope and message or the new ones, never a mix.
func (s *Spool) Save(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error {
	if m == nil {
		return s.update(ctx, env, from, to, "", "")
	}
	f, err := os.CreateTemp(filepath.Join(s.root, "tmp"), env.ID+".*.eml")
	if err != nil {
		return err
	}
	n, err := m.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	old, oldSize := env.Message, env.Size
	gen := 1
	if rest, ok := strings.CutPrefix(old, env.ID+"~"); ok {
		fmt.Sscanf(strings.TrimSuffix(rest, ".eml"), "%d", &gen)
		gen++
	}
	env.Message = fmt.Sprintf("%s~%d.eml", env.ID, gen)
	env.Size = n
	if err := s.update(ctx, env, from, to, f.Name(), old); err != nil {
		env.Message, env.Size = old, oldSize
		return err
	}
	return nil
}

// Remove implements Store. It does not wait for a sync: a crash right
// after may bring the message back, to be delivered again (at least
// once), which the scheduler allows. The envelope goes first, so that a
// journaling filesystem never shows an envelope whose message is gone.
func (s *Spool) Remove(ctx context.Context, q string, env *Envelope) error {
	dir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, env.ID+".json")); err != nil {
		return err
	}
	os.Remove(filepath.Join(s.root, "msg", env.Message))
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
	return s.enqueue(ctx, env, q, write)
}
