package queue

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mtakit/mtakit/policy"
)

// Names of the queues. Quarantine queues are "quarantine/<name>".
const (
	Working  = "working"  // accepted, postq rules not yet run
	Deliver  = "deliver"  // ready for delivery
	Deferred = "deferred" // waiting for its next attempt
	Dead     = "dead"     // failed for good (bounced where asked), kept for inspection
	Corrupt  = "corrupt"  // unreadable entries set aside
)

// QuarantinePrefix starts the name of every quarantine queue.
const QuarantinePrefix = "quarantine/"

// Errors of the admin API.
var (
	ErrNotFound  = errors.New("queue: no such message")
	ErrBadQueue  = errors.New("queue: bad queue name")
	ErrBadID     = errors.New("queue: bad queue ID")
	ErrExists    = errors.New("queue: queue ID already in use")
	ErrNoRcpts   = errors.New("queue: transaction without recipients")
	ErrNoMessage = errors.New("queue: nil message")
)

var baseQueues = []string{Working, Deliver, Deferred, Dead, Corrupt}

// Option configures a Spool.
type Option func(*Spool)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Spool) { s.log = l } }

// WithUnsafeNoSync turns every fsync off. UNSAFE: a crash or power loss
// loses mail that was acknowledged. It exists only to measure what
// durability costs (benchmarks); never use it in production.
func WithUnsafeNoSync() Option { return func(s *Spool) { s.noSync = true } }

// WithDSN sets what SupportsDSN reports (default true: the spool stores
// NOTIFY, RET, ENVID and ORCPT and the scheduler honours them).
func WithDSN(on bool) Option { return func(s *Spool) { s.dsn = on } }

// WithNow sets the clock used for arrival and attempt times (tests).
func WithNow(now func() time.Time) Option { return func(s *Spool) { s.now = now } }

// Spool is the durable store of queued messages, a directory laid out as:
//
//	tmp/                      files being written
//	msg/<id>.eml              the messages (msg/<id>~<n>.eml after postq edits)
//	working/<id>.json         envelopes of accepted messages, postq not yet run
//	deliver/<id>.json         ready for delivery
//	deferred/<id>.json        waiting for a retry
//	dead/<id>.json            failed for good
//	quarantine/<name>/<id>.json
//	corrupt/                  unreadable envelopes and messages, set aside
//
// A message's state is the place of its envelope; moving between queues is
// a rename. Every change is made durable before the call that made it
// returns, and concurrent changes share their fsyncs (group commit).
//
// A Spool is safe for concurrent use; the admin methods may be called while
// a Scheduler runs.
type Spool struct {
	root   string
	log    *slog.Logger
	noSync bool
	dsn    bool
	now    func() time.Time
	c      *committer
	locks  idLocks
	lock   *os.File

	closeOnce sync.Once

	mu   sync.Mutex
	wake func(id, queue string)
}

// Open opens (creating it if needed) the spool in dir. Leftovers of writes
// a crash interrupted (tmp/ files, messages without an envelope) are
// removed.
func Open(dir string, opts ...Option) (*Spool, error) {
	s := &Spool{root: dir, log: slog.Default(), dsn: true, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	for _, d := range append([]string{"tmp", "msg", "quarantine"}, baseQueues...) {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, err
		}
	}
	lock, err := lockSpool(dir)
	if err != nil {
		return nil, err
	}
	if err := s.cleanup(); err != nil {
		lock.Close()
		return nil, err
	}
	c, err := newCommitter(dir, s.noSync)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s.c, s.lock = c, lock
	return s, nil
}

// ErrLocked is returned by Open when another Spool (in this process or
// another) has the directory open.
var ErrLocked = errors.New("queue: spool in use by another process")

// lockSpool takes an exclusive flock(2) on <dir>/lock, so that two
// processes never run one spool (double deliveries, and one's cleanup
// removing the other's messages being written). The kernel releases it when
// the process dies.
func lockSpool(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, err
	}
	return f, nil
}

// Close stops the spool after the changes under way are committed. Stop
// the Scheduler first.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		s.c.close()
		s.lock.Close()
	})
	return nil
}

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.root }

// SupportsDSN reports whether DSN parameters are honoured (the smtp package
// advertises DSN when it is true).
func (s *Spool) SupportsDSN() bool { return s.dsn }

func (s *Spool) cleanup() error {
	tmp := filepath.Join(s.root, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		os.Remove(filepath.Join(tmp, e.Name()))
	}
	ids := map[string]string{} // id -> queue
	qs, err := s.Queues()
	if err != nil {
		return err
	}
	for _, q := range qs {
		names, err := s.listIDs(q)
		if err != nil {
			return err
		}
		for _, id := range names {
			ids[id] = q
		}
	}
	msgs, err := os.ReadDir(filepath.Join(s.root, "msg"))
	if err != nil {
		return err
	}
	files := map[string][]string{}
	for _, e := range msgs {
		id := msgID(e.Name())
		if _, ok := ids[id]; !ok {
			s.log.Info("queue: removing message without envelope", "file", e.Name())
			os.Remove(filepath.Join(s.root, "msg", e.Name()))
			continue
		}
		files[id] = append(files[id], e.Name())
	}
	// Several files of one message: a crash fell between a header rewrite
	// and the removal of the old file. Keep the one the envelope names.
	for id, names := range files {
		if len(names) < 2 {
			continue
		}
		env, err := s.readEnvelope(ids[id], id)
		if err != nil {
			continue // the scheduler sets it aside
		}
		for _, n := range names {
			if n != env.Message {
				os.Remove(filepath.Join(s.root, "msg", n))
			}
		}
	}
	return nil
}

// msgID returns the queue ID of a message file name.
func msgID(name string) string {
	name = strings.TrimSuffix(name, ".eml")
	if i := strings.IndexByte(name, '~'); i >= 0 {
		name = name[:i]
	}
	return name
}

// queueDir returns the directory of queue q, or an error for a bad name.
func (s *Spool) queueDir(q string) (string, error) {
	if slices.Contains(baseQueues, q) {
		return filepath.Join(s.root, q), nil
	}
	if name, ok := strings.CutPrefix(q, QuarantinePrefix); ok && validID(name) {
		return filepath.Join(s.root, "quarantine", name), nil
	}
	return "", fmt.Errorf("%w: %q", ErrBadQueue, q)
}

// Queues returns the names of the queues: the fixed ones and every
// quarantine queue that exists.
func (s *Spool) Queues() ([]string, error) {
	qs := slices.Clone(baseQueues)
	ents, err := os.ReadDir(filepath.Join(s.root, "quarantine"))
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if e.IsDir() && validID(e.Name()) {
			qs = append(qs, QuarantinePrefix+e.Name())
		}
	}
	return qs, nil
}

func (s *Spool) listIDs(q string) ([]string, error) {
	dir, err := s.queueDir(q)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && validID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// NewID returns a new queue ID: 20 characters of base32, time-ordered
// prefix, file-name safe.
func NewID() string {
	var b [12]byte
	t := uint64(time.Now().UnixNano())
	for i := 0; i < 6; i++ {
		b[i] = byte(t >> (8 * (7 - i)))
	}
	rand.Read(b[6:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// Enqueue stores an accepted message durably and returns only once the
// message, its envelope and their directory entries are on disk. tx.ID is
// the queue ID (a new one is assigned when empty); it must be file-name
// safe ([A-Za-z0-9._-], at most 128, no leading dot) and unused. A
// transaction with tx.Quarantine() set goes straight to
// quarantine/<name>; any other to working, where the scheduler picks it up.
//
// An error means the message is not queued; the caller must answer 4xx.
func (s *Spool) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if m == nil {
		return ErrNoMessage
	}
	if tx.ID == "" {
		tx.ID = NewID()
	}
	if !validID(tx.ID) {
		return fmt.Errorf("%w: %q", ErrBadID, tx.ID)
	}
	if len(tx.Rcpts) == 0 {
		return ErrNoRcpts
	}
	q := Working
	if name := tx.Quarantine(); name != "" {
		q = QuarantinePrefix + name
	}
	return s.enqueue(ctx, newEnvelope(tx, s.now()), q, m.WriteTo)
}

// enqueue writes the message with write, then the envelope, and commits
// both into queue q.
func (s *Spool) enqueue(ctx context.Context, env *Envelope, q string, write func(io.Writer) (int64, error)) error {
	qdir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	if strings.HasPrefix(q, QuarantinePrefix) {
		if err := os.MkdirAll(qdir, 0o750); err != nil {
			return err
		}
	}
	env.Message = env.ID + ".eml"
	msgPath := filepath.Join(s.root, "msg", env.Message)
	f, err := os.OpenFile(msgPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, env.ID)
		}
		return err
	}
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(f)
	n, err := write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writerPool.Put(bw)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(msgPath)
		return fmt.Errorf("queue: writing message: %w", err)
	}
	env.Size = n
	if env.NextAttempt.IsZero() {
		env.NextAttempt = s.now()
	}
	tmp, err := s.writeTemp(env)
	if err != nil {
		os.Remove(msgPath)
		return err
	}
	final := filepath.Join(qdir, env.ID+".json")
	o := &op{
		files:   []string{msgPath, tmp},
		renames: [][2]string{{tmp, final}},
		dirs:    []string{qdir},
	}
	if !syncCoversCreates {
		o.dirs = append(o.dirs, filepath.Join(s.root, "msg"))
	}
	err = s.c.commit(ctx, o)
	if err != nil {
		os.Remove(tmp)
		os.Remove(final)
		os.Remove(msgPath)
		return fmt.Errorf("queue: committing %s: %w", env.ID, err)
	}
	s.notify(env.ID, q)
	return nil
}

// writerPool holds the buffers messages are written through.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// writeTemp writes env to a new file in tmp/ and returns its path.
func (s *Spool) writeTemp(env *Envelope) (string, error) {
	b, err := env.Encode()
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Join(s.root, "tmp"), env.ID+".*.json")
	if err != nil {
		return "", err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func (s *Spool) setWake(fn func(id, queue string)) {
	s.mu.Lock()
	s.wake = fn
	s.mu.Unlock()
}

func (s *Spool) notify(id, q string) {
	s.mu.Lock()
	fn := s.wake
	s.mu.Unlock()
	if fn != nil {
		fn(id, q)
	}
}

// locate returns the queue holding id.
func (s *Spool) locate(id string) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("%w: %q", ErrBadID, id)
	}
	qs, err := s.Queues()
	if err != nil {
		return "", err
	}
	for _, q := range qs {
		dir, _ := s.queueDir(q)
		if _, err := os.Stat(filepath.Join(dir, id+".json")); err == nil {
			return q, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotFound, id)
}

// readEnvelope reads the envelope of id in queue q.
func (s *Spool) readEnvelope(q, id string) (*Envelope, error) {
	dir, err := s.queueDir(q)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, err
	}
	env, err := DecodeEnvelope(b)
	if err != nil {
		return nil, err
	}
	if env.ID != id {
		return nil, fmt.Errorf("%w: envelope of %s says id %q", ErrCorrupt, id, env.ID)
	}
	return env, nil
}

// openMessage opens the message of env, checking its size.
func (s *Spool) openMessage(env *Envelope) (*policy.Message, error) {
	f, err := os.Open(filepath.Join(s.root, "msg", env.Message))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: message file %s missing", ErrCorrupt, env.Message)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() != env.Size {
		f.Close()
		return nil, fmt.Errorf("%w: message %s has %d bytes, envelope says %d", ErrCorrupt, env.Message, st.Size(), env.Size)
	}
	m, err := policy.NewMessage(f, st.Size(), f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: message %s: %v", ErrCorrupt, env.Message, err)
	}
	return m, nil
}

// update stores env (changed) and moves it from queue "from" to queue "to";
// newMsg, when not "", is a message file already written in tmp/ that
// becomes msg/env.Message (the old message file is removed after).
func (s *Spool) update(ctx context.Context, env *Envelope, from, to string, newMsg string, oldMsg string) error {
	fdir, err := s.queueDir(from)
	if err != nil {
		return err
	}
	tdir, err := s.queueDir(to)
	if err != nil {
		return err
	}
	if to != from && strings.HasPrefix(to, QuarantinePrefix) {
		if err := os.MkdirAll(tdir, 0o750); err != nil {
			return err
		}
	}
	tmp, err := s.writeTemp(env)
	if err != nil {
		return err
	}
	o := &op{files: []string{tmp}, dirs: []string{fdir}}
	if newMsg != "" {
		// The new message is published before the envelope naming it.
		o.files = append(o.files, newMsg)
		o.renames = append(o.renames, [2]string{newMsg, filepath.Join(s.root, "msg", env.Message)})
		o.dirs = append(o.dirs, filepath.Join(s.root, "msg"))
		if oldMsg != "" && oldMsg != env.Message {
			o.after = append(o.after, filepath.Join(s.root, "msg", oldMsg))
		}
	}
	cur := filepath.Join(fdir, env.ID+".json")
	o.renames = append(o.renames, [2]string{tmp, cur})
	if to != from {
		o.renames = append(o.renames, [2]string{cur, filepath.Join(tdir, env.ID+".json")})
		o.dirs = append(o.dirs, tdir)
	}
	if err := s.c.commit(ctx, o); err != nil {
		os.Remove(tmp)
		if newMsg != "" {
			os.Remove(newMsg)
		}
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	return nil
}

// remove deletes the entry id of queue q: the envelope first (durably),
// then its message files (names in msg/, or paths).
func (s *Spool) remove(ctx context.Context, q, id string, msgFiles ...string) error {
	dir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	o := &op{removes: []string{filepath.Join(dir, id+".json")}, dirs: []string{dir}}
	for _, m := range msgFiles {
		if !filepath.IsAbs(m) && !strings.ContainsRune(m, filepath.Separator) {
			m = filepath.Join(s.root, "msg", m)
		}
		o.after = append(o.after, m)
	}
	return s.c.commit(ctx, o)
}

// setAside moves a corrupt entry (envelope and every message file of its ID)
// to corrupt/ and logs it.
func (s *Spool) setAside(ctx context.Context, q, id string, cause error) {
	s.log.Error("queue: corrupt entry set aside", "id", id, "queue", q, "error", cause)
	dir, err := s.queueDir(q)
	if err != nil {
		return
	}
	cdir := filepath.Join(s.root, Corrupt)
	o := &op{dirs: []string{dir, cdir}}
	if q != Corrupt {
		o.renames = append(o.renames, [2]string{filepath.Join(dir, id+".json"), filepath.Join(cdir, id+".json")})
	}
	msgs, _ := filepath.Glob(filepath.Join(s.root, "msg", id+"*.eml"))
	for _, m := range msgs {
		if msgID(filepath.Base(m)) == id {
			o.renames = append(o.renames, [2]string{m, filepath.Join(cdir, filepath.Base(m))})
		}
	}
	if len(msgs) > 0 {
		o.dirs = append(o.dirs, filepath.Join(s.root, "msg"))
	}
	if err := s.c.commit(ctx, o); err != nil {
		s.log.Error("queue: could not set corrupt entry aside", "id", id, "error", err)
	}
}

// idLocks serialises work on one queue ID between scheduler workers and
// the admin API.
type idLocks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (l *idLocks) lock(ctx context.Context, id string) (func(), error) {
	for {
		l.mu.Lock()
		if l.m == nil {
			l.m = map[string]chan struct{}{}
		}
		ch, busy := l.m[id]
		if !busy {
			ch = make(chan struct{})
			l.m[id] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.m, id)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *idLocks) tryLock(id string) (func(), bool) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	unlock, err := l.lock(ctx, id)
	return unlock, err == nil
}
