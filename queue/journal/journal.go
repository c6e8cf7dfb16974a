package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtakit/mtakit/internal/idlock"
	"github.com/mtakit/mtakit/internal/msgsrc"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

// DefaultSegmentSize is Config.SegmentSize's zero value.
const DefaultSegmentSize = 64 << 20

// LockFile is the name of the lock file in the directory of a journal:
// its presence tells a journal from a queue.Spool (whose lock file is
// "lock").
const LockFile = "journal.lock"

// minSegmentSize bounds Config.SegmentSize from below.
const minSegmentSize = 64 << 10

// reserved returns the room kept at the end of every segment of segSize
// bytes (see the package doc, "A full disk"): the last done bytes take
// only done records, the state bytes before them state and done records.
// A full record (a new or copied message, a replaced body) stops short of
// both, so that when a full disk keeps the next segment from being made,
// the active segment still has room for the records of the messages that
// leave the queue: a done record is headLen+4+len(ID) bytes (57 with the
// IDs of policy.NewID, 164 at most), a state record a few hundred bytes
// (its envelope).
//
//	segment   done room            state room
//	64 MiB    512 KiB (~9,000)     1 MiB
//	64 KiB    8 KiB (~140)         16 KiB
//
// Both together are at most 3/8 of a segment (24 KiB of the smallest,
// 64 KiB), so that a record up to half a segment (larger ones get a
// segment of their own) fits the part of a new segment full records may
// use.
func reserved(segSize int64) (state, done int64) {
	return max(segSize/64, 16<<10), max(segSize/128, 8<<10)
}

// Config configures a Store (see Open). The zero value of every field but
// Dir is its default; Open reads it once, and changing it afterwards has
// no effect.
type Config struct {
	// Dir is the journal's directory, created if needed; required. It
	// holds the segment files and the lock file (LockFile), nothing else.
	Dir string
	// SegmentSize is the size of a segment file, zero-filled before use.
	// A record larger than half of it gets a segment of its own. Its last
	// SegmentSize/64 + SegmentSize/128 bytes (at least 24 KiB) are kept
	// for state and done records (see the package doc, on a full disk).
	// Zero means DefaultSegmentSize (64 MiB); at least 64 KiB.
	SegmentSize int64
	// Logger receives the store's log entries (damaged records found at
	// Open, entries set aside, compaction and I/O failures). Nil means
	// slog.Default().
	Logger *slog.Logger
	// Clock gives the arrival and attempt times stamped on envelopes.
	// Nil means the real clock. Tests share one Clock between the Store
	// and the Scheduler (queue.Config.Clock).
	Clock queue.Clock
	// NoDSN makes SupportsDSN report false (see queue.SpoolConfig.NoDSN).
	NoDSN bool
	// Events, when set, is told of each sync round (Events.SpoolCommitted,
	// with the number of records it made durable together), for metrics;
	// its other methods are not called. Nil: nothing is reported.
	Events queue.Events
	// UnsafeNoSync turns every sync off, and segments are not zero-filled.
	// UNSAFE: a crash of the machine loses acknowledged mail. It exists to
	// measure what durability costs; never set it in production.
	UnsafeNoSync bool
}

// Store is a queue.Store on an append-only journal; see the package doc.
// It is safe for concurrent use.
type Store struct {
	dir     string
	segSize int64
	log     *slog.Logger
	noSync  bool
	dsn     bool
	clock   queue.Clock
	events  queue.Events
	lock    *os.File
	ds      *dirSyncer
	locks   idlock.Locks
	nextNum atomic.Uint64 // the next segment's number
	// stateRoom, doneRoom: the room reserved at the end of each segment
	// (see reserved).
	stateRoom, doneRoom int64

	mu      sync.Mutex
	closed  bool
	err     error // a write or sync failed: the store refuses changes
	seq     uint64
	entries map[string]*entry
	byQueue map[string]map[string]struct{}
	segs    map[uint64]*segment
	// recs counts, per ID, the segments holding a full or state record of
	// it (their ids maps): see deletable.
	recs   map[string]int
	active *segment
	// rotating, while a writer waits for the next segment, is closed when
	// it is in place.
	rotating chan struct{}

	// free holds the files of compacted segments kept for reuse (at most
	// maxFree): prepare renames one to the next segment's name instead of
	// zero-filling a new file.
	freeMu sync.Mutex
	free   []string

	ops   sync.WaitGroup // changes under way (Close waits for them)
	spare chan spareSeg  // segments made ready by prepare
	need  chan struct{}  // a writer waits for the first one
	// asks counts the writers' requests for a segment: a failure to make
	// one is given only to a writer that asked before the attempt began
	// (see reserve).
	asks atomic.Uint64
	kick chan struct{} // wakes compact
	stop chan struct{}
	wg   sync.WaitGroup // prepare and compact

	wakeMu sync.Mutex
	wake   func(id, queue string)
}

type spareSeg struct {
	sg  *segment
	err error
	// asked is Store.asks when the attempt began.
	asked uint64
}

// entry is a message in the index.
type entry struct {
	// mu is held across a change of the message (write, sync, index
	// update), so that changes and compaction's copies do not interleave.
	mu sync.Mutex

	id      string
	q       string
	seq     uint64   // of the record holding its envelope
	envSeg  *segment // where its envelope is
	envOff  int64
	envLen  int64
	body    bodyRef
	bodySeg *segment
	bodyGen uint64 // changes when the body is replaced (not when copied)
	bad     error  // the body is not where the record says: ErrCorrupt
	pending bool   // being added: not there for anyone yet
	gone    bool   // removed
	hot     *queue.Envelope
}

var (
	// ErrLocked is returned by Open when another Store (in this process
	// or another) has the directory open.
	ErrLocked   = errors.New("journal: in use by another process")
	errLockHeld = errors.New("lock held elsewhere")
	errClosed   = errors.New("journal: closed")
)

// Open opens (creating it if needed) the journal in cfg.Dir: it takes the
// directory's lock, reads every segment to rebuild the index (a record
// that a crash tore, and everything after it in its segment, is ignored:
// none of it was acknowledged), and starts the goroutines that prepare
// segments and compact them. Close the Store when done.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("journal: Config.Dir is required")
	}
	if cfg.SegmentSize == 0 {
		cfg.SegmentSize = DefaultSegmentSize
	}
	if cfg.SegmentSize < minSegmentSize {
		return nil, fmt.Errorf("journal: SegmentSize %d below %d", cfg.SegmentSize, minSegmentSize)
	}
	s := &Store{
		dir: cfg.Dir, segSize: cfg.SegmentSize, log: cfg.Logger, noSync: cfg.UnsafeNoSync, dsn: !cfg.NoDSN, clock: cfg.Clock, events: cfg.Events,
		ds:      &dirSyncer{path: cfg.Dir, noSync: cfg.UnsafeNoSync},
		entries: map[string]*entry{}, byQueue: map[string]map[string]struct{}{}, segs: map[uint64]*segment{}, recs: map[string]int{},
		spare: make(chan spareSeg), need: make(chan struct{}, 1), kick: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.stateRoom, s.doneRoom = reserved(s.segSize)
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, LockFile), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		if errors.Is(err, errLockHeld) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, cfg.Dir)
		}
		return nil, fmt.Errorf("journal: locking %s: %w", cfg.Dir, err)
	}
	s.lock = lock
	if err := s.load(ctx); err != nil {
		s.closeSegments()
		lock.Close()
		return nil, err
	}
	s.wg.Add(2)
	go s.prepare()
	go s.compactLoop()
	return s, nil
}

func (s *Store) now() time.Time {
	if s.clock != nil {
		return s.clock.Now()
	}
	return time.Now()
}

func (s *Store) dsync(f *os.File) error {
	if s.noSync {
		return nil
	}
	return datasync(f)
}

// Close stops the store once the changes under way are done, and closes
// its files and lock. Stop the Scheduler first.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.ops.Wait()
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	// What was written without waiting (removals, attempt records) is
	// made durable: a clean stop loses nothing.
	var err error
	if s.err == nil && !s.noSync {
		for _, sg := range s.segs {
			sg.mu.Lock()
			dirty := sg.done > sg.synced
			sg.mu.Unlock()
			if dirty {
				if serr := datasync(sg.f); serr != nil && err == nil {
					err = fmt.Errorf("journal: syncing %s: %w", sg.path, serr)
				}
			}
		}
	}
	s.closeSegments()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

// closeSegments closes every segment file; an unused active segment is
// removed (it holds nothing).
func (s *Store) closeSegments() {
	for _, sg := range s.segs {
		sg.f.Close()
		if sg == s.active && sg.next == 0 {
			os.Remove(sg.path)
		}
	}
}

// SupportsDSN reports whether DSN parameters are honoured (see
// Config.NoDSN); the smtp package advertises DSN when it is true.
func (s *Store) SupportsDSN() bool { return s.dsn }

var _ queue.Store = (*Store)(nil)

// begin starts a change: it fails once the store is closed or failed.
func (s *Store) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if s.err != nil {
		return s.err
	}
	s.ops.Add(1)
	return nil
}

// fail stops every later change: a write or sync failed, and what the
// disk holds is no longer known (the store is to be reopened, which reads
// back what is there).
func (s *Store) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = fmt.Errorf("journal: failed earlier, reopen it: %w", err)
		s.log.Error("journal: write failed; no more changes until it is reopened", "dir", s.dir, "error", err)
	}
	s.mu.Unlock()
}

// checkQueue validates a queue name.
func checkQueue(q string) error {
	switch q {
	case queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt:
		return nil
	}
	if name, ok := strings.CutPrefix(q, queue.QuarantinePrefix); ok && queue.ValidID(name) {
		return nil
	}
	return fmt.Errorf("%w: %q", queue.ErrBadQueue, q)
}

// runnable reports whether the scheduler works on the messages of queue q.
func runnable(q string) bool { return q == queue.Working || q == queue.Deliver || q == queue.Deferred }

// Watch implements queue.Store.
func (s *Store) Watch(fn func(id, queue string)) {
	s.wakeMu.Lock()
	s.wake = fn
	s.wakeMu.Unlock()
}

func (s *Store) notify(id, q string) {
	s.wakeMu.Lock()
	fn := s.wake
	s.wakeMu.Unlock()
	if fn != nil {
		fn(id, q)
	}
}

// IDs implements queue.Store.
func (s *Store) IDs(q string) ([]string, error) {
	if err := checkQueue(q); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.byQueue[q]))
	for id := range s.byQueue[q] {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	slices.Sort(ids)
	return ids, nil
}

// Queues implements queue.Store: the fixed queues and every quarantine
// queue holding a message.
func (s *Store) Queues() ([]string, error) {
	qs := []string{queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt}
	var names []string
	s.mu.Lock()
	for q, ids := range s.byQueue {
		if strings.HasPrefix(q, queue.QuarantinePrefix) && len(ids) > 0 {
			names = append(names, q)
		}
	}
	s.mu.Unlock()
	slices.Sort(names)
	return append(qs, names...), nil
}

// Lock implements queue.Store.
func (s *Store) Lock(ctx context.Context, id string) (func(), error) { return s.locks.Lock(ctx, id) }

// get returns the entry of id, locked (e.mu); ErrNotFound when there is
// none.
func (s *Store) get(id string) (*entry, error) {
	if !queue.ValidID(id) {
		return nil, fmt.Errorf("%w: %q", queue.ErrBadID, id)
	}
	s.mu.Lock()
	e := s.entries[id]
	pending := e != nil && e.pending
	s.mu.Unlock()
	if e == nil || pending {
		return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
	}
	e.mu.Lock()
	if e.gone {
		e.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
	}
	return e, nil
}

// Load implements queue.Store. The message reads the segment holding it
// (no copy); closing it lets the segment be compacted away.
func (s *Store) Load(id string) (string, *queue.Envelope, *policy.Message, error) {
	if !queue.ValidID(id) {
		return "", nil, nil, fmt.Errorf("%w: %q", queue.ErrBadID, id)
	}
	s.mu.Lock()
	e := s.entries[id]
	if e == nil || e.pending || e.gone {
		s.mu.Unlock()
		return "", nil, nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
	}
	q, bad := e.q, e.bad
	if bad != nil {
		s.mu.Unlock()
		return q, nil, nil, bad
	}
	env := e.hot
	e.hot = nil
	envSeg, envOff, envLen := e.envSeg, e.envOff, e.envLen
	bodySeg, body, gen := e.bodySeg, e.body, e.bodyGen
	bodySeg.readers++
	if env == nil {
		envSeg.readers++
	}
	s.mu.Unlock()
	if env == nil {
		b := make([]byte, envLen)
		_, err := envSeg.f.ReadAt(b, envOff)
		s.release(envSeg)
		if err == nil {
			env, err = queue.DecodeEnvelope(b)
		}
		if err == nil && env.ID != id {
			err = fmt.Errorf("%w: envelope of %s says id %q", queue.ErrCorrupt, id, env.ID)
		}
		if err == nil && env.Size != body.n {
			err = fmt.Errorf("%w: message of %s has %d bytes, envelope says %d", queue.ErrCorrupt, id, body.n, env.Size)
		}
		if err != nil {
			s.release(bodySeg)
			return q, nil, nil, fmt.Errorf("journal: loading %s: %w", id, err)
		}
	}
	src := &msgSrc{Src: msgsrc.Src{File: bodySeg.f, Off: body.off, Stored: body.n}, env: env, ref: body, gen: gen}
	if env.Head != nil {
		src.Head, src.Base = env.Head, env.BodyOff
	}
	m, err := policy.NewMessage(src, src.Size(), &segCloser{s: s, sg: bodySeg})
	if err != nil {
		s.release(bodySeg)
		return q, nil, nil, fmt.Errorf("%w: message %s: %v", queue.ErrCorrupt, id, err)
	}
	return q, env, m, nil
}

// release drops a reader of sg.
func (s *Store) release(sg *segment) {
	s.mu.Lock()
	sg.readers--
	s.mu.Unlock()
}

// segCloser releases a loaded message's segment, once.
type segCloser struct {
	s    *Store
	sg   *segment
	once sync.Once
}

func (c *segCloser) Close() error {
	c.once.Do(func() { c.s.release(c.sg) })
	return nil
}

// msgSrc is a loaded message (see msgsrc.Src) over its body's segment;
// Save recognises it to tell a header edit from a new body.
type msgSrc struct {
	msgsrc.Src
	env *queue.Envelope
	ref bodyRef
	gen uint64
}

// storedBody reports whether m's body is the stored body of e, unchanged,
// and where it starts in the stored message.
func storedBody(e *entry, env *queue.Envelope, m *policy.Message) (int64, bool) {
	sr, ok := m.Body().(*io.SectionReader)
	if !ok {
		return 0, false
	}
	outer, off, n := sr.Outer()
	src, ok := outer.(*msgSrc)
	if !ok || src.env != env || src.gen != e.bodyGen || src.ref.n != e.body.n {
		return 0, false
	}
	start, ok := src.InStored(off)
	if !ok || start+n != e.body.n {
		return 0, false
	}
	return start, true
}

// Save implements queue.Store: a state record (the envelope, the queue,
// where the body is), synced before it returns. Header edits of m go into
// the envelope (Envelope.Head); only a replaced body is written again, in
// a full record.
func (s *Store) Save(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message) error {
	return s.save(ctx, env, from, to, m, true)
}

// SaveUnsynced implements queue.Store: the state record is written (in
// the page cache: a crash of the process keeps it) and not waited for;
// the next sync of its segment makes it durable. A replaced body is
// written durably all the same.
func (s *Store) SaveUnsynced(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message) error {
	return s.save(ctx, env, from, to, m, false)
}

func (s *Store) save(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message, durable bool) error {
	if err := checkQueue(to); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.ops.Done()
	e, err := s.get(env.ID)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	if e.q != from {
		return fmt.Errorf("%w: %s is in %s, not %s", queue.ErrNotFound, env.ID, e.q, from)
	}
	moved, head, boff, size := env.Moved, env.Head, env.BodyOff, env.Size
	restore := func() { env.Moved, env.Head, env.BodyOff, env.Size = moved, head, boff, size }
	if to != from {
		env.Moved = s.now()
	}
	r := &record{typ: recState, id: env.ID, q: to, ref: e.body}
	var write func(io.Writer) (int64, error)
	if m != nil {
		if off, ok := storedBody(e, env, m); ok {
			env.Head, env.BodyOff = queue.HeadBytes(m), off
		} else {
			r = &record{typ: recFull, id: env.ID, q: to, bodyLen: m.Size()}
			env.Head, env.BodyOff, env.Size = nil, 0, m.Size()
			write, durable = m.WriteTo, true
		}
	}
	if r.env, err = env.Encode(); err != nil {
		restore()
		return err
	}
	if err := s.commit(ctx, e, r, write, durable); err != nil {
		restore()
		return err
	}
	if write != nil {
		s.mu.Lock() // Load reads it under s.mu
		e.bodyGen++
		s.mu.Unlock()
	}
	if runnable(to) && !env.NextAttempt.After(s.now()) {
		s.notify(env.ID, to)
	}
	return nil
}

// Remove implements queue.Store: a done record, not waited for (a crash
// may bring the message back, to be delivered again).
func (s *Store) Remove(ctx context.Context, q, id string) error {
	return s.remove(ctx, q, id, false)
}

// RemoveDurably implements queue.DurableRemover (an operator's Delete):
// Remove, returning once the done record is synced.
func (s *Store) RemoveDurably(ctx context.Context, q, id string) error {
	return s.remove(ctx, q, id, true)
}

func (s *Store) remove(ctx context.Context, q, id string, durable bool) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.ops.Done()
	e, err := s.get(id)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	if e.q != q {
		return fmt.Errorf("%w: %s is in %s, not %s", queue.ErrNotFound, id, e.q, q)
	}
	return s.commit(ctx, e, &record{typ: recDone, id: id}, nil, durable)
}

// SetAside implements queue.Store: the envelope, as it is, moves to the
// corrupt queue.
func (s *Store) SetAside(ctx context.Context, q, id string, cause error) {
	s.log.Error("queue: corrupt entry set aside", "id", id, "queue", q, "error", cause)
	if err := s.begin(); err != nil {
		s.log.Error("queue: could not set corrupt entry aside", "id", id, "error", err)
		return
	}
	defer s.ops.Done()
	e, err := s.get(id)
	if err != nil {
		return
	}
	defer e.mu.Unlock()
	if e.q != q || q == queue.Corrupt {
		return
	}
	raw, err := s.readEnv(e)
	if err == nil {
		err = s.commit(ctx, e, &record{typ: recState, id: id, q: queue.Corrupt, ref: e.body, env: raw}, nil, true)
	}
	if err != nil {
		s.log.Error("queue: could not set corrupt entry aside", "id", id, "error", err)
	}
}

// readEnv returns the stored envelope of e (e.mu held) as it is.
func (s *Store) readEnv(e *entry) ([]byte, error) {
	s.mu.Lock()
	sg, off, n := e.envSeg, e.envOff, e.envLen
	sg.readers++
	s.mu.Unlock()
	defer s.release(sg)
	b := make([]byte, n)
	if _, err := sg.f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// Add implements queue.Store. The content write produces (of a size not
// known before) goes to a spill buffer first (memory, then a temporary
// file for a large one), then into the journal.
func (s *Store) Add(ctx context.Context, env *queue.Envelope, q string, write func(io.Writer) (int64, error)) error {
	if !queue.ValidID(env.ID) {
		return fmt.Errorf("%w: %q", queue.ErrBadID, env.ID)
	}
	if len(env.Rcpts) == 0 {
		return queue.ErrNoRcpts
	}
	if err := checkQueue(q); err != nil {
		return err
	}
	sp := &spill{dir: s.dir}
	defer sp.close()
	n, err := write(sp)
	if err == nil {
		err = sp.err
	}
	if err != nil {
		return fmt.Errorf("journal: writing message: %w", err)
	}
	env.Size = n
	return s.add(ctx, env, q, n, sp.writeTo, false)
}

// Enqueue implements smtp.Queue: it stores an accepted message and
// returns nil only once its record is synced (see the package doc). tx.ID
// is the queue ID (policy.NewID when empty). A transaction with
// tx.Quarantine() set goes straight to that quarantine queue, any other to
// working. An error means the message is not queued: the caller answers
// 4xx.
func (s *Store) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if m == nil {
		return queue.ErrNoMessage
	}
	if tx.ID == "" {
		tx.ID = policy.NewID()
	}
	if !queue.ValidID(tx.ID) {
		return fmt.Errorf("%w: %q", queue.ErrBadID, tx.ID)
	}
	if len(tx.Rcpts) == 0 {
		return queue.ErrNoRcpts
	}
	q := queue.Working
	if name := tx.Quarantine(); name != "" {
		q = queue.QuarantinePrefix + name
	}
	if err := checkQueue(q); err != nil {
		return err
	}
	env, err := queue.NewEnvelope(tx, s.now())
	if err != nil {
		return err
	}
	env.Size = m.Size()
	if err := s.add(ctx, env, q, env.Size, m.WriteTo, q == queue.Working); err != nil {
		return err
	}
	if q != queue.Working {
		// Quarantined before the queue: its recipients' delivery ends here.
		queue.LogQuarantined(ctx, s.log, env, q, s.now())
	}
	return nil
}

// add stores a new message of n bytes, which write produces, as a full
// record, durably.
func (s *Store) add(ctx context.Context, env *queue.Envelope, q string, n int64, write func(io.Writer) (int64, error), keep bool) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.ops.Done()
	if env.NextAttempt.IsZero() {
		env.NextAttempt = s.now()
	}
	e := &entry{id: env.ID, pending: true}
	e.mu.Lock()
	defer e.mu.Unlock()
	s.mu.Lock()
	if s.entries[env.ID] != nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", queue.ErrExists, env.ID)
	}
	s.entries[env.ID] = e
	s.mu.Unlock()
	r := &record{typ: recFull, id: env.ID, q: q, bodyLen: n}
	var err error
	if r.env, err = env.Encode(); err == nil {
		err = s.commit(ctx, e, r, write, true)
	}
	if err != nil {
		s.mu.Lock()
		if s.entries[env.ID] == e {
			delete(s.entries, env.ID)
		}
		s.mu.Unlock()
		return fmt.Errorf("journal: storing %s: %w", env.ID, err)
	}
	if keep {
		s.mu.Lock()
		if !e.gone && e.q == q {
			e.hot = env
		}
		s.mu.Unlock()
	}
	s.notify(env.ID, q)
	return nil
}

// commit writes record r of entry e (e.mu held; body from write for a
// full record), waits for its sync when durable, and updates the index.
func (s *Store) commit(ctx context.Context, e *entry, r *record, write func(io.Writer) (int64, error), durable bool) error {
	sg, off, err := s.write(ctx, r, write)
	if err != nil {
		return err
	}
	if durable && !s.noSync {
		if err := sg.durable(off+r.size(), false); err != nil {
			s.mu.Lock()
			sg.writing--
			s.mu.Unlock()
			s.fail(err)
			return err
		}
	}
	s.apply(e, r, sg, off)
	return nil
}

// apply updates the index with record r of entry e, written at off in sg.
func (s *Store) apply(e *entry, r *record, sg *segment, off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sg.writing--
	if e.envSeg != nil {
		s.unref(e.envSeg, e.envLen)
		s.unref(e.bodySeg, e.body.n)
		e.envSeg, e.bodySeg = nil, nil
	}
	if e.q != "" {
		delete(s.byQueue[e.q], e.id)
	}
	e.hot = nil
	e.pending = false
	if r.typ == recDone {
		e.gone = true
		if s.entries[e.id] == e {
			delete(s.entries, e.id)
		}
		sg.dones[e.id] = r.seq
		s.kickCompact()
		return
	}
	if _, ok := sg.ids[e.id]; !ok {
		s.recs[e.id]++
	}
	sg.ids[e.id] = r.seq
	e.q, e.seq = r.q, r.seq
	metaLen := int64(r.metaLen())
	e.envSeg, e.envOff, e.envLen = sg, off+headLen+metaLen-int64(len(r.env)), int64(len(r.env))
	if r.typ == recFull {
		e.body = bodyRef{seg: sg.num, off: off + headLen + metaLen, n: r.bodyLen}
		e.bodySeg, e.bad = sg, nil
	} else {
		e.bodySeg = s.segs[r.ref.seg]
		e.body = r.ref
	}
	s.ref(e.envSeg, e.envLen)
	s.ref(e.bodySeg, e.body.n)
	if s.byQueue[e.q] == nil {
		s.byQueue[e.q] = map[string]struct{}{}
	}
	s.byQueue[e.q][e.id] = struct{}{}
}

func (s *Store) ref(sg *segment, n int64) { sg.live++; sg.liveB += n }

func (s *Store) unref(sg *segment, n int64) {
	sg.live--
	sg.liveB -= n
	if sg.live == 0 {
		s.kickCompact()
	}
}

func (s *Store) kickCompact() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// write reserves room for r, assigns its sequence, and writes it (its
// body from write); the range is then marked written in its segment,
// whose writing count stays raised until the caller's apply.
func (s *Store) write(ctx context.Context, r *record, write func(io.Writer) (int64, error)) (*segment, int64, error) {
	hm := getHeadMeta(r)
	defer putHeadMeta(hm)
	total := r.size()
	sg, off, err := s.reserve(ctx, r, total)
	if err != nil {
		return nil, 0, err
	}
	err = s.writeAt(sg, off, r, *hm, write)
	if err != nil && sg.own {
		// Nothing else is in its segment: it goes at once, and the room
		// it took with it (a full disk). Its record's header, written
		// last, was not written: a crash before the removal leaves a
		// segment without records.
		s.dropOwn(sg)
		return nil, 0, err
	}
	if err != nil {
		// Skipped by a pad record, so that the records after it in the
		// segment still count.
		if _, perr := sg.f.WriteAt(padHeader(sg.num, r.seq, total), off); perr != nil {
			s.fail(perr)
			sg.fail(perr)
		}
	}
	sg.complete(off, off+total)
	if err != nil {
		s.mu.Lock()
		sg.writing--
		s.mu.Unlock()
		return nil, 0, err
	}
	return sg, off, nil
}

// dropOwn removes sg, a segment of its own whose one record could not be
// written.
func (s *Store) dropOwn(sg *segment) {
	s.mu.Lock()
	sg.writing--
	sg.gone = true
	delete(s.segs, sg.num)
	s.mu.Unlock()
	sg.f.Close()
	os.Remove(sg.path)
}

// headMetas holds the buffers a record's header and meta are built in
// (see getHeadMeta).
var headMetas = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// getHeadMeta returns a pooled buffer holding room for r's header
// followed by r's meta part; putHeadMeta gives it back.
func getHeadMeta(r *record) *[]byte {
	hm := headMetas.Get().(*[]byte)
	*hm = r.appendMeta(append((*hm)[:0], make([]byte, headLen)...))
	return hm
}

func putHeadMeta(hm *[]byte) {
	if cap(*hm) <= 64<<10 { // an envelope's meta is a few KiB
		headMetas.Put(hm)
	}
}

// writeAt writes record r at off in sg, hm being the room of its header
// followed by its meta part (getHeadMeta): with one write when it fits in
// a recWriter's buffer, else meta and body first and the header last.
func (s *Store) writeAt(sg *segment, off int64, r *record, hm []byte, write func(io.Writer) (int64, error)) error {
	h, meta := hm[:headLen], hm[headLen:]
	total := int64(len(meta)) + headLen + r.bodyLen
	if write == nil {
		r.putHeader(h, sg.num, meta)
		_, err := sg.f.WriteAt(hm, off)
		return err
	}
	rw := recWriters.Get().(*recWriter)
	defer rw.release()
	rw.begin(sg.f, off, total)
	_, err := rw.Write(meta)
	cw := &crcWriter{w: rw}
	if err == nil {
		var n int64
		n, err = write(cw)
		if err == nil && (n != r.bodyLen || cw.n != r.bodyLen) {
			err = fmt.Errorf("journal: message of %d bytes, %d written", r.bodyLen, cw.n)
		}
	}
	if err == nil {
		r.bodyCRC = cw.crc
		r.putHeader(h, sg.num, meta)
		err = rw.done(h, off)
	}
	if err != nil {
		return fmt.Errorf("journal: writing %s: %w", r.id, err)
	}
	return nil
}

// limit returns where a record of type typ must end in a segment of size
// bytes: full records leave the state and done rooms free, state records
// the done room (see reserved).
func (s *Store) limit(typ byte, size int64) int64 {
	switch typ {
	case recDone:
		return size
	case recState:
		return size - s.doneRoom
	}
	return size - s.doneRoom - s.stateRoom
}

// reserve places a record of total bytes: in the active segment, in the
// next one (prepare made it ready), or, for a record larger than half a
// segment, in a segment of its own. It assigns r.seq.
//
// The active segment is sealed only once the next one is in place: when
// that cannot be made (a full disk), the record is refused and the active
// segment stays, its reserved room (see reserved) still taking the
// records that fit there.
func (s *Store) reserve(ctx context.Context, r *record, total int64) (*segment, int64, error) {
	if total > s.segSize/2 {
		return s.reserveOwn(r, total)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.active == nil || s.active.next+total > s.limit(r.typ, s.active.cap) {
		if ch := s.rotating; ch != nil {
			// Another writer is taking the next segment: wait for it
			// without holding the lock (Load, IDs and the changes
			// finishing go on meanwhile).
			s.mu.Unlock()
			var err error
			select {
			case <-ch:
			case <-ctx.Done():
				err = ctx.Err()
			}
			s.mu.Lock()
			if err != nil {
				return nil, 0, err
			}
			continue
		}
		ch := make(chan struct{})
		s.rotating = ch
		s.mu.Unlock()
		sp := s.nextSegment(ctx)
		s.mu.Lock()
		s.rotating = nil
		close(ch)
		if sp.err != nil {
			return nil, 0, sp.err
		}
		if s.events != nil {
			sp.sg.committed = s.events.SpoolCommitted
		}
		if old := s.active; old != nil {
			old.sealed = true
			s.kickCompact()
		}
		s.segs[sp.sg.num] = sp.sg
		s.active = sp.sg
	}
	sg := s.active
	off := sg.next
	sg.next += total
	sg.writing++
	s.seq++
	r.seq = s.seq
	if sg.minSeq == 0 {
		sg.minSeq = r.seq
	}
	sg.maxSeq = r.seq
	return sg, off, nil
}

// nextSegment waits for the segment prepare makes ready. A failure to
// make one counts only when the attempt began after this writer asked:
// an earlier one (made while nobody waited) may be out of date, room
// having come back since, and another attempt is asked for.
func (s *Store) nextSegment(ctx context.Context) spareSeg {
	ask := s.asks.Add(1)
	for {
		select {
		case s.need <- struct{}{}:
		default:
		}
		select {
		case sp := <-s.spare:
			if sp.err != nil && sp.asked < ask {
				continue
			}
			return sp
		case <-ctx.Done():
			return spareSeg{err: ctx.Err()}
		case <-s.stop:
			return spareSeg{err: errClosed}
		}
	}
}

// reserveOwn makes a segment of its own for a large record.
func (s *Store) reserveOwn(r *record, total int64) (*segment, int64, error) {
	sg, err := createSegment(s.dir, s.nextNum.Add(1)-1, total, false, s.dsync, s.ds)
	if err != nil {
		return nil, 0, err
	}
	sg.own, sg.sealed, sg.next, sg.needDir = true, true, total, !s.noSync
	if s.events != nil {
		sg.committed = s.events.SpoolCommitted
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.segs[sg.num] = sg
	sg.writing++
	s.seq++
	r.seq = s.seq
	sg.minSeq, sg.maxSeq = r.seq, r.seq
	return sg, 0, nil
}

// prepare keeps a segment ready for reserve: a compacted segment's file
// under a new number, or a new zero-filled one. The first is made when a
// writer needs it or a second after Open, so that a store opened only to
// be read (the queue command) writes nothing.
func (s *Store) prepare() {
	defer s.wg.Done()
	select {
	case <-s.need:
	case <-time.After(time.Second):
	case <-s.stop:
		return
	}
	for {
		asked := s.asks.Load()
		sg, err := s.reuse()
		if sg == nil && err == nil {
			sg, err = createSegment(s.dir, s.nextNum.Add(1)-1, s.segSize, !s.noSync, s.dsync, s.ds)
		}
		if err != nil {
			s.log.Error("journal: preparing a segment", "error", err)
		}
		select {
		case s.spare <- spareSeg{sg, err, asked}:
		case <-s.stop:
			if sg != nil {
				sg.f.Close()
				os.Remove(sg.path)
			}
			return
		}
		if err != nil {
			// Try again when a writer asks, not on a timer: a failure
			// found while nobody waits could only reach a later writer,
			// after room may have come back (the disk was full). At
			// most one failed attempt a second: on a nearly full disk
			// each writes what room is left before it fails.
			failed := time.Now()
			select {
			case <-s.need:
			case <-s.stop:
				return
			}
			if d := time.Second - time.Since(failed); d > 0 {
				select {
				case <-time.After(d):
				case <-s.stop:
					return
				}
			}
		}
	}
}
