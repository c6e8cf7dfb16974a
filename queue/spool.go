package queue

import (
	"bufio"
	"context"
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

	"github.com/mtakit/mtakit/internal/idlock"
	"github.com/mtakit/mtakit/internal/msgsrc"
	"github.com/mtakit/mtakit/policy"
)

// Names of the queues. Quarantine queues are "quarantine/<name>".
const (
	Working  = "working"  // accepted, postq rules not yet run
	Deliver  = "deliver"  // ready for delivery
	Deferred = "deferred" // waiting for its next attempt
	Hold     = "hold"     // kept by an operator, never delivered until released (see Spool.Hold)
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

var baseQueues = []string{Working, Deliver, Deferred, Hold, Dead, Corrupt}

// SpoolConfig configures a Spool (see Open). The zero value is a working
// configuration: every field's zero value is its default. Open copies what
// it needs; changing the struct afterwards has no effect.
type SpoolConfig struct {
	// Logger receives the spool's log entries (corrupt entries set aside,
	// the result lines of a message queued straight into quarantine).
	// Nil means slog.Default().
	Logger *slog.Logger
	// Clock gives the arrival and attempt times stamped on entries. Nil
	// means the real clock. Tests share one Clock between the Spool and
	// the Scheduler (Config.Clock).
	Clock Clock
	// NoDSN makes SupportsDSN report false, so that the smtp package does
	// not advertise DSN. Zero (false): the spool stores NOTIFY, RET, ENVID
	// and ORCPT and the scheduler honours them.
	NoDSN bool
	// UnsafeNoSync turns every fsync off. UNSAFE: a crash or power loss
	// loses mail that was acknowledged. It exists only to measure what
	// durability costs (benchmarks); never set it in production. Zero
	// (false): every change is durable before the call making it returns.
	UnsafeNoSync bool
	// Events, when set, is told of each commit round (see
	// Events.SpoolCommitted), for metrics. Nil: nothing is reported.
	Events Events
}

// Spool is the durable store of queued messages, a directory laid out as:
//
//	tmp/                      entries being written
//	working/<id>.q            accepted messages, postq not yet run
//	deliver/<id>.q            ready for delivery
//	deferred/<id>.q           waiting for a retry
//	hold/<id>.q               held by an operator until released
//	dead/<id>.q               failed for good
//	quarantine/<name>/<id>.q
//	corrupt/                  unreadable entries, set aside
//	free/                     files of delivered entries, for reuse
//
// Each entry is one file holding the message and, appended after it, its
// envelope records (see Envelope); a message's state is the place of its
// entry, and moving between queues is a rename. Every change is made
// durable before the call that made it returns, and concurrent changes
// share their syncs (group commit).
//
// A Spool is safe for concurrent use; the admin methods may be called while
// a Scheduler runs.
type Spool struct {
	root   string
	log    *slog.Logger
	noSync bool
	dsn    bool
	now    func() time.Time
	clock  Clock      // nil: the real clock
	c      *committer // the accept path (Enqueue)
	cs     *committer // everything else: the scheduler and the admin API
	locks  idlock.Locks
	rec    *recycler
	// syncs holds the shared sync rounds of the enqueues and the
	// filesystem handles they go through, closed by Close.
	syncs fsSyncs

	idMu sync.Mutex
	ids  map[string]struct{} // IDs in use: every entry, and enqueues under way
	// committing holds the enqueues under way: their entry may already be
	// in its queue (published before the sync), but is not there for
	// anyone until the commit returns.
	committing map[string]struct{}
	lock       *os.File

	// hot holds the entries just enqueued for the scheduler's Load (see
	// hotEntry); nil once the spool is closed.
	hotMu sync.Mutex
	hot   map[string]hotEntry

	closeOnce sync.Once

	mu   sync.Mutex
	wake func(id, queue string)
}

// Open opens (creating it if needed) the spool in dir. Leftovers of writes
// a crash interrupted (tmp/ files, messages without an envelope) are
// removed. cfg is read once; see SpoolConfig for its defaults.
func Open(dir string, cfg SpoolConfig) (*Spool, error) {
	s := &Spool{root: dir, log: cfg.Logger, noSync: cfg.UnsafeNoSync, dsn: !cfg.NoDSN, now: time.Now, ids: map[string]struct{}{}, committing: map[string]struct{}{}, hot: map[string]hotEntry{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.Clock != nil {
		s.now, s.clock = cfg.Clock.Now, cfg.Clock
	}
	for _, d := range append([]string{"tmp", "quarantine"}, baseQueues...) {
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
	if s.rec, err = newRecycler(dir, recycleEntries); err != nil {
		lock.Close()
		return nil, err
	}
	c, err := newCommitter(dir, s.noSync, &s.syncs)
	if err == nil {
		if err = c.shareSyncs(); err != nil {
			c.close()
		}
	}
	if err != nil {
		s.syncs.close()
		lock.Close()
		return nil, err
	}
	cs, err := newCommitter(dir, s.noSync, &s.syncs)
	if err != nil {
		c.close()
		s.syncs.close()
		lock.Close()
		return nil, err
	}
	s.c, s.cs, s.lock = c, cs, lock
	if cfg.Events != nil {
		c.events, cs.events = cfg.Events, cfg.Events
		s.syncs.groups.committed = cfg.Events.SpoolCommitted
	}
	return s, nil
}

// ErrLocked is returned by Open when another Spool (in this process or
// another) has the directory open.
var ErrLocked = errors.New("queue: spool in use by another process")

// errLockHeld: lockFile without waiting found the lock taken.
var errLockHeld = errors.New("lock held elsewhere")

// lockSpool takes an exclusive lock on <dir>/lock (flock(2), LockFileEx on
// Windows), so that two processes never run one spool (double deliveries,
// and one's cleanup removing the other's messages being written). The
// kernel releases it when the process dies.
func lockSpool(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f, false); err != nil {
		f.Close()
		if errors.Is(err, errLockHeld) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, err
	}
	return f, nil
}

// Close stops the spool after the changes under way are committed, and
// releases what it holds open: the lock, the directory and filesystem
// handles its syncs go through. Stop the Scheduler first.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		s.c.close()
		s.cs.close()
		s.syncs.close()
		s.closeHot()
		s.lock.Close()
	})
	return nil
}

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
			s.ids[id] = struct{}{}
		}
	}
	return nil
}

// reserve claims id for a new entry; false when it is in use.
func (s *Spool) reserve(id string) bool {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if _, ok := s.ids[id]; ok {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}

// setCommitting marks id's enqueue as under way (on) or over.
func (s *Spool) setCommitting(id string, on bool) {
	s.idMu.Lock()
	if on {
		s.committing[id] = struct{}{}
	} else {
		delete(s.committing, id)
	}
	s.idMu.Unlock()
}

// isCommitting reports whether id's enqueue is under way.
func (s *Spool) isCommitting(id string) bool {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	_, ok := s.committing[id]
	return ok
}

// release forgets id (its entry is gone, or was never made).
func (s *Spool) release(id string) {
	s.idMu.Lock()
	delete(s.ids, id)
	s.idMu.Unlock()
}

// entryPath returns the entry file of id in queue directory dir.
func entryPath(dir, id string) string { return filepath.Join(dir, id+entrySuffix) }

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
		if id, ok := strings.CutSuffix(e.Name(), entrySuffix); ok && validID(id) && !s.isCommitting(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Enqueue stores an accepted message durably and returns only once the
// message, its envelope and their directory entries are on disk. tx.ID is
// the queue ID (a new one, policy.NewID, is assigned when empty); it must
// be file-name safe ([A-Za-z0-9._-], at most 128, no leading dot) and
// unused. A
// transaction with tx.Quarantine() set goes straight to
// quarantine/<name>; any other to working, where the scheduler picks it up.
//
// An error means the message is not queued; the caller must answer 4xx.
func (s *Spool) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if m == nil {
		return ErrNoMessage
	}
	if tx.ID == "" {
		tx.ID = policy.NewID()
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
	env, err := newEnvelope(tx, s.now())
	if err != nil {
		return err
	}
	if err := s.enqueue(ctx, env, q, writeMessage(m), s.c); err != nil {
		return err
	}
	if q != Working {
		// Quarantined before the queue: its recipients' delivery ends
		// here, and the result lines say so.
		LogQuarantined(ctx, s.log, env, q, s.now())
	}
	return nil
}

// enqueue writes the entry (message, then envelope) in tmp/ and commits it
// into queue q: one file created per message.
func (s *Spool) enqueue(ctx context.Context, env *Envelope, q string, write func(io.Writer) (int64, error), c *committer) error {
	qdir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	if strings.HasPrefix(q, QuarantinePrefix) {
		if err := os.MkdirAll(qdir, 0o750); err != nil {
			return err
		}
	}
	if !s.reserve(env.ID) {
		return fmt.Errorf("%w: %s", ErrExists, env.ID)
	}
	if env.NextAttempt.IsZero() {
		env.NextAttempt = s.now()
	}
	since := c.begin()
	f, err := s.writeEntry(entryPath(filepath.Join(s.root, "tmp"), env.ID), env, write)
	if err != nil {
		s.release(env.ID)
		return err
	}
	tmp, final := f.Name(), entryPath(qdir, env.ID)
	o := &op{files: []string{tmp}, renames: [][2]string{{tmp, final}}, dirs: []string{qdir}, since: since}
	if syncCoversRenames {
		// Published first, made durable with its data by the one sync:
		// half the device flushes of sync, rename, directory sync. The
		// cost is at a power loss during that sync: the entry may be in
		// its queue with its content not (a new file's zeros, or a free
		// file's former entry, whose envelope then names another ID); it
		// is then set aside as corrupt. Its client had no 250 yet.
		o.renameFirst, o.dirs = true, nil
	}
	s.setCommitting(env.ID, true)
	err = c.commit(ctx, o)
	if err == nil {
		// Kept while the entry is still hidden (committing): a Delete,
		// Move or start-up scan can find it only after, and then drops
		// this copy before it changes the entry.
		if c == s.c && q == Working {
			s.keepHot(env, f)
		} else {
			f.Close()
		}
	}
	s.setCommitting(env.ID, false)
	if err != nil {
		f.Close()
		os.Remove(tmp)
		os.Remove(final)
		s.release(env.ID)
		return fmt.Errorf("queue: committing %s: %w", env.ID, err)
	}
	s.notify(env.ID, q)
	return nil
}

// writeEntry writes a new entry file: the message write produces, then env
// (whose Size it sets) as the first record. It returns the file, open for
// reading and writing, not yet published: a file of free/ written over, or
// a new one at path; f.Name() is where it is.
func (s *Spool) writeEntry(path string, env *Envelope, write func(io.Writer) (int64, error)) (*os.File, error) {
	f, recycled, err := s.rec.create(path)
	if err != nil {
		return nil, err
	}
	path = f.Name()
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(f)
	_, err = bw.Write(entryHeader(0)) // the length is filled in below
	var n int64
	if err == nil {
		n, err = write(bw)
	}
	var rec []byte
	if err == nil {
		env.Size = n
		rec, err = encodeRecord(env)
	}
	if err == nil {
		_, err = bw.Write(rec)
	}
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writerPool.Put(bw)
	if err == nil {
		_, err = f.WriteAt(entryHeader(n), 0)
	}
	if err == nil && recycled {
		// Cut off what is left of the file's former entry.
		err = f.Truncate(int64(entryHeadLen) + n + int64(len(rec)))
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("queue: writing message: %w", err)
	}
	env.end = int64(entryHeadLen) + n + int64(len(rec))
	return f, nil
}

// writerPool holds the buffers messages are written through.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// copyMessage writes m to w with m.WriteTo, which copies the body through
// a pooled buffer and writes the header fields as they are (m.Reader would
// copy the header first). The wrapper hides a *bufio.Writer's ReadFrom,
// which hands a large body to os.File.ReadFrom and its new 32 KiB buffer.
func copyMessage(w io.Writer, m *policy.Message) (int64, error) {
	return m.WriteTo(struct{ io.Writer }{w})
}

// writeMessage returns a writer function for m (see copyMessage).
func writeMessage(m *policy.Message) func(io.Writer) (int64, error) {
	return func(w io.Writer) (int64, error) { return copyMessage(w, m) }
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

// locate returns the queue holding id: the base queues first, then the
// quarantine ones.
func (s *Spool) locate(id string) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("%w: %q", ErrBadID, id)
	}
	if s.isCommitting(id) {
		return "", fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	for _, q := range baseQueues {
		if _, err := os.Lstat(entryPath(filepath.Join(s.root, q), id)); err == nil {
			return q, nil
		}
	}
	qs, err := s.Queues()
	if err != nil {
		return "", err
	}
	for _, q := range qs[len(baseQueues):] {
		dir, _ := s.queueDir(q)
		if _, err := os.Lstat(entryPath(dir, id)); err == nil {
			return q, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotFound, id)
}

// openEntry opens the entry of id in queue q (flag: os.O_RDONLY or
// os.O_RDWR) and reads its envelope.
func (s *Spool) openEntry(q, id string, flag int) (*os.File, *Envelope, error) {
	dir, err := s.queueDir(q)
	if err != nil {
		return nil, nil, err
	}
	s.rec.acquire(id)
	f, err := openFile(entryPath(dir, id), flag, 0)
	if err != nil {
		s.rec.release(id)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, nil, err
	}
	env, err := readEntry(f, id)
	if err != nil {
		s.closeEntry(f, id)
		return nil, nil, err
	}
	return f, env, nil
}

// closeEntry closes a handle openEntry returned; the entry's file may be
// reused once its last handle is closed (see recycler).
func (s *Spool) closeEntry(f *os.File, id string) error {
	err := f.Close()
	s.rec.release(id)
	return err
}

// entryCloser closes a loaded message's entry file.
type entryCloser struct {
	s   *Spool
	f   *os.File
	id  string
	env *Envelope
}

func (c *entryCloser) Close() error {
	if c.env.f == c.f {
		c.env.f = nil
	}
	return c.s.closeEntry(c.f, c.id)
}

// loadEntry returns the envelope and message of id in queue q; the message
// (header edits of postq applied) reads the entry file, closed with it.
func (s *Spool) loadEntry(q, id string) (*Envelope, *policy.Message, error) {
	f, env, err := s.openEntry(q, id, os.O_RDWR)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.message(f, id, env)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: message %s: %v", ErrCorrupt, id, err)
	}
	return env, m, nil
}

// message returns the message of entry id, open in f, with the header
// edits of postq applied; closing it closes f (closed here on error).
// env keeps f for later changes of the entry.
func (s *Spool) message(f *os.File, id string, env *Envelope) (*policy.Message, error) {
	src := &msgSrc{Src: msgsrc.Src{File: f, Off: int64(entryHeadLen), Stored: env.Size}, env: env}
	if env.Head != nil {
		src.Head, src.Base = env.Head, env.BodyOff
	}
	m, err := policy.NewMessage(src, src.Size(), &entryCloser{s, f, id, env})
	if err != nil {
		s.closeEntry(f, id)
		return nil, err
	}
	env.f = f
	return m, nil
}

// moveDirs returns the directories of queues from and to, making a new
// quarantine directory for to.
func (s *Spool) moveDirs(from, to string) (fdir, tdir string, err error) {
	if fdir, err = s.queueDir(from); err != nil {
		return "", "", err
	}
	if tdir, err = s.queueDir(to); err != nil {
		return "", "", err
	}
	if to != from && strings.HasPrefix(to, QuarantinePrefix) {
		if err := os.MkdirAll(tdir, 0o750); err != nil {
			return "", "", err
		}
	}
	return fdir, tdir, nil
}

// update stores env (changed) by appending it to its entry, and moves the
// entry from queue "from" to queue "to", in one commit. On failure the
// append is undone as far as possible; either way the entry holds the old
// envelope or the new one, whole. Unless durable, the append and the move
// are not synced (see SaveUnsynced).
func (s *Spool) update(ctx context.Context, env *Envelope, from, to string, durable bool) error {
	s.dropHot(env.ID)
	fdir, tdir, err := s.moveDirs(from, to)
	if err != nil {
		return err
	}
	if to != from {
		env.Moved = s.now()
	}
	cur := entryPath(fdir, env.ID)
	rec, err := encodeRecord(env)
	if err != nil {
		return err
	}
	f := env.f
	if f == nil {
		if f, err = openFile(cur, os.O_RDWR, 0); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: %s", ErrNotFound, env.ID)
			}
			return err
		}
		defer f.Close()
	}
	since := s.cs.begin()
	end := env.end
	if end == 0 {
		old, err := readEntry(f, env.ID)
		if err != nil {
			return err
		}
		end = old.end
	}
	if _, err := f.WriteAt(rec, end); err != nil {
		f.Truncate(end)
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	if !durable {
		if to != from {
			if err := rename(cur, entryPath(tdir, env.ID)); err != nil {
				f.Truncate(end)
				return fmt.Errorf("queue: updating %s: %w", env.ID, err)
			}
		}
		env.end = end + int64(len(rec))
		return nil
	}
	o := &op{files: []string{cur}, dirs: []string{fdir}, since: since}
	if to != from {
		o.renames = append(o.renames, [2]string{cur, entryPath(tdir, env.ID)})
		o.dirs = append(o.dirs, tdir)
	} else {
		o.dirs = nil // an append in place: the sync is enough
	}
	if err := s.cs.commit(ctx, o); err != nil {
		f.Truncate(end)
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	env.end = end + int64(len(rec))
	return nil
}

// replace stores m as the new message of env, in a new entry file that
// takes the place of the old one in queue "from", then moves it to "to".
func (s *Spool) replace(ctx context.Context, env *Envelope, from, to string, m *policy.Message) error {
	s.dropHot(env.ID)
	fdir, tdir, err := s.moveDirs(from, to)
	if err != nil {
		return err
	}
	head, off, size, end := env.Head, env.BodyOff, env.Size, env.end
	env.Head, env.BodyOff = nil, 0
	if to != from {
		env.Moved = s.now()
	}
	tmp := entryPath(filepath.Join(s.root, "tmp"), env.ID)
	os.Remove(tmp)
	since := s.cs.begin()
	f, err := s.writeEntry(tmp, env, writeMessage(m))
	if err != nil {
		env.Head, env.BodyOff, env.Size, env.end = head, off, size, end
		return err
	}
	tmp = f.Name()
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		env.Head, env.BodyOff, env.Size, env.end = head, off, size, end
		return fmt.Errorf("queue: writing message: %w", err)
	}
	cur := entryPath(fdir, env.ID)
	o := &op{files: []string{tmp}, renames: [][2]string{{tmp, cur}}, dirs: []string{fdir}, since: since}
	if to != from {
		o.renames = append(o.renames, [2]string{cur, entryPath(tdir, env.ID)})
		o.dirs = append(o.dirs, tdir)
	}
	// The old file's handle is done with either way: the commit may
	// fail after its rename put the new file in place.
	env.f = nil
	if err := s.cs.commit(ctx, o); err != nil {
		os.Remove(tmp)
		// end 0: the next change reads the entry back to find its end.
		env.Head, env.BodyOff, env.Size, env.end = head, off, size, 0
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	return nil
}

// remove deletes the entry id of queue q, durably.
func (s *Spool) remove(ctx context.Context, q, id string) error {
	s.dropHot(id)
	dir, err := s.queueDir(q)
	if err != nil {
		return err
	}
	o := &op{removes: []string{entryPath(dir, id)}, dirs: []string{dir}}
	if err := s.cs.commit(ctx, o); err != nil {
		return err
	}
	s.release(id)
	return nil
}

// setAside moves a corrupt entry to corrupt/ and logs it.
func (s *Spool) setAside(ctx context.Context, q, id string, cause error) {
	s.dropHot(id)
	s.log.Error("queue: corrupt entry set aside", "id", id, "queue", q, "error", cause)
	dir, err := s.queueDir(q)
	if err != nil || q == Corrupt {
		return
	}
	cdir := filepath.Join(s.root, Corrupt)
	o := &op{renames: [][2]string{{entryPath(dir, id), entryPath(cdir, id)}}, dirs: []string{dir, cdir}}
	if err := s.cs.commit(ctx, o); err != nil {
		s.log.Error("queue: could not set corrupt entry aside", "id", id, "error", err)
	}
}
