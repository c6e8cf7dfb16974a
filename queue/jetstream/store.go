package jetstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mtakit/mtakit/internal/idlock"
	"github.com/mtakit/mtakit/internal/msgsrc"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

// Config configures a Store (see Open). The zero value of every field is
// its default; Open reads it once.
type Config struct {
	// Conn is the connection to the NATS servers; the Store does not
	// close it. Nil: Open connects to URL (and Close closes it).
	Conn *nats.Conn
	// URL lists the servers ("nats://host:port", comma-separated), used
	// when Conn is nil. Zero means nats.DefaultURL (127.0.0.1:4222).
	URL string
	// Stream names the envelopes' stream (default "MTAQ"); Subject is the
	// first token of its subjects (default "mtaq"), Bucket the object
	// store of the bodies (default "MTAQ_BODIES") and Consumer the
	// durable consumer every node's scheduler pulls from (default
	// "sched"). Open creates them, or updates them to this Config.
	Stream, Subject, Bucket, Consumer string
	// Replicas of the stream and the object store: 0 means 1 (a single
	// server); 3 in a cluster (see the package doc for what each gives).
	Replicas int
	// AckWait is how long a node may hold a message without a sign of
	// life before the consumer hands it to another node (in-progress acks
	// are sent every AckWait/3 while it works on it). Zero means 30 s.
	AckWait time.Duration
	// MaxHeld bounds the messages this node holds from the consumer at
	// once (waiting for a worker or being delivered). Zero means 64.
	MaxHeld int
	// Timeout bounds each operation on the servers (Enqueue and each
	// change, also when the caller's context allows longer; Load, IDs,
	// Queues), so that a cluster without quorum fails them in that time
	// (the SMTP client then gets 451 4.3.0). It must allow storing the
	// largest message. Zero means 30 s.
	Timeout time.Duration
	// TempDir holds the bodies of the messages being read (a file per
	// open message, removed at once, so that none is held in memory).
	// Zero means os.TempDir().
	TempDir string
	// NoDSN makes SupportsDSN report false (see queue.SpoolConfig.NoDSN).
	NoDSN bool
	// Clock gives the times stamped on envelopes and decides when a
	// deferred message is due. Nil means the real clock.
	Clock queue.Clock
	// Logger receives the store's log entries. Nil means slog.Default().
	Logger *slog.Logger
}

// Store is a queue.SharedStore on NATS JetStream; see the package doc. It
// is safe for concurrent use.
type Store struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	ownNC  bool
	js     jetstream.JetStream
	stream jetstream.Stream
	// info is a second handle of the stream for Info, which rewrites
	// what a handle caches (a race with the reads of another call).
	infoMu sync.Mutex
	info   jetstream.Stream
	obj    jetstream.ObjectStore
	// objStream is the object store's stream, for reading chunks (see
	// readObject).
	objStream jetstream.Stream
	cons      jetstream.Consumer
	prefix    string // cfg.Subject + "."

	ctx    context.Context // ends with Close
	cancel context.CancelFunc

	locks idlock.Locks

	// dispatchLookup, when set (tests), replaces lookup in dispatch.
	dispatchLookup func(ctx context.Context, id string) (*current, error)

	mu      sync.Mutex
	wake    func(id, queue string)
	held    map[string]*held
	room    chan struct{} // signalled when a held message is let go
	pulling chan struct{} // closed when the pull loop stops; nil: none running
	stop    context.CancelFunc
	wg      sync.WaitGroup // the in-progress ack goroutines
}

// held is a message this node got from the consumer.
type held struct {
	msg   jetstream.Msg
	seq   uint64
	taken bool          // the scheduler claimed it (Claim)
	done  chan struct{} // closed when it is let go: stops the in-progress acks
	next  time.Time     // when it is due again if let go unrecorded
}

var _ queue.SharedStore = (*Store)(nil)

// lagDelay is how long a message waits to be handed out again when the
// stream leader had not yet applied it (see dispatch).
const lagDelay = 250 * time.Millisecond

const (
	hdrBody  = "Mtaq-Body"  // the object holding the message
	hdrQueue = "Mtaq-Queue" // of an attempt record: the queue it moved to
)

// Open connects to JetStream and creates (or updates) the stream, the
// object store and the consumer of cfg. Close the Store when done.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Stream == "" {
		cfg.Stream = "MTAQ"
	}
	if cfg.Subject == "" {
		cfg.Subject = "mtaq"
	}
	if cfg.Bucket == "" {
		cfg.Bucket = "MTAQ_BODIES"
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "sched"
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	s := &Store{cfg: cfg, log: cfg.Logger, nc: cfg.Conn, prefix: cfg.Subject + ".", held: map[string]*held{}, room: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.nc == nil {
		url := cfg.URL
		if url == "" {
			url = nats.DefaultURL
		}
		nc, err := nats.Connect(url, nats.Name("mtakit queue"), nats.MaxReconnects(-1))
		if err != nil {
			return nil, fmt.Errorf("jetstream: connecting to %s: %w", url, err)
		}
		s.nc, s.ownNC = nc, true
	}
	if err := s.setup(ctx); err != nil {
		if s.ownNC {
			s.nc.Close()
		}
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func (s *Store) setup(ctx context.Context) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	s.js = js
	s.stream, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              s.cfg.Stream,
		Description:       "mtakit queue: message envelopes",
		Subjects:          []string{s.prefix + "env.>", s.prefix + "att.>"},
		Retention:         jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject: 1,
		Storage:           jetstream.FileStorage,
		Replicas:          s.cfg.Replicas,
		Duplicates:        2 * time.Minute,
		// With one replica, direct gets (the lookups) read what the
		// leader has, without waiting in the server's JetStream API
		// queue behind the deletes, each fsynced on a server syncing
		// always. With replicas they may read a lagging one: see
		// leaderReads.
		AllowDirect: s.cfg.Replicas == 1,
	})
	if err != nil {
		return fmt.Errorf("jetstream: stream %s: %w", s.cfg.Stream, err)
	}
	if s.info, err = js.Stream(ctx, s.cfg.Stream); err != nil {
		return fmt.Errorf("jetstream: stream %s: %w", s.cfg.Stream, err)
	}
	s.obj, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      s.cfg.Bucket,
		Description: "mtakit queue: message bodies",
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("jetstream: object store %s: %w", s.cfg.Bucket, err)
	}
	if err := s.leaderReads(ctx); err != nil {
		return err
	}
	s.cons, err = s.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:     s.cfg.Consumer,
		Description: "mtakit queue: every node's scheduler",
		FilterSubjects: []string{
			s.prefix + "env.*." + queue.Working,
			s.prefix + "env.*." + queue.Deliver,
			s.prefix + "env.*." + queue.Deferred,
		},
		AckPolicy:  jetstream.AckExplicitPolicy,
		AckWait:    s.cfg.AckWait,
		MaxDeliver: -1,
		// A deferred message waits as a nak with delay, which keeps it
		// among the consumer's pending acks: any limit would stop
		// delivery once that many messages are deferred.
		MaxAckPending: -1,
		Replicas:      s.cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("jetstream: consumer %s: %w", s.cfg.Consumer, err)
	}
	return nil
}

// Close stops handing out messages (those this node holds go back to the
// consumer at once) and closes the connection if Open made it. Stop the
// Scheduler first.
func (s *Store) Close() error {
	s.Watch(nil)
	s.cancel()
	s.wg.Wait()
	if s.ownNC {
		s.nc.Close()
	}
	return nil
}

// Conn returns the connection the store uses (Config.Conn, or the one
// Open made), for other JetStream state of the same servers (key-value
// buckets); it stays open until Close.
func (s *Store) Conn() *nats.Conn { return s.nc }

// SupportsDSN reports whether DSN parameters are honoured (see Config.NoDSN).
func (s *Store) SupportsDSN() bool { return !s.cfg.NoDSN }

func (s *Store) now() time.Time {
	if s.cfg.Clock != nil {
		return s.cfg.Clock.Now()
	}
	return time.Now()
}

func (s *Store) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.cfg.Timeout)
}

// bound returns ctx bounded by Config.Timeout.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.Timeout)
}

// token writes id (or a quarantine name) as one subject token.
func token(id string) string { return strings.ReplaceAll(id, ".", "~") }

// untoken is token's inverse.
func untoken(t string) string { return strings.ReplaceAll(t, "~", ".") }

// queueSubject returns the tokens of queue q in a subject.
func queueSubject(q string) (string, error) {
	switch q {
	case queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt:
		return q, nil
	}
	if name, ok := strings.CutPrefix(q, queue.QuarantinePrefix); ok && queue.ValidID(name) {
		return "quarantine." + token(name), nil
	}
	return "", fmt.Errorf("%w: %q", queue.ErrBadQueue, q)
}

func (s *Store) envSubject(id, q string) (string, error) {
	qs, err := queueSubject(q)
	if err != nil {
		return "", err
	}
	return s.prefix + "env." + token(id) + "." + qs, nil
}

func (s *Store) idFilter(id string) string   { return s.prefix + "env." + token(id) + ".>" }
func (s *Store) attSubject(id string) string { return s.prefix + "att." + token(id) }

// parseSubject returns the ID and queue of an envelope subject.
func (s *Store) parseSubject(subj string) (id, q string, ok bool) {
	rest, ok := strings.CutPrefix(subj, s.prefix+"env.")
	if !ok {
		return "", "", false
	}
	tok, qs, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", false
	}
	if name, isq := strings.CutPrefix(qs, "quarantine."); isq {
		qs = queue.QuarantinePrefix + untoken(name)
	}
	return untoken(tok), qs, true
}

// current is the state of a message as stored.
type current struct {
	q    string // its queue (the attempt record's when that is newer)
	seq  uint64 // the sequence of its envelope message
	subj string // the subject of that message
	att  uint64 // the sequence of its attempt record (0: none)
	data []byte // the current envelope: the newer of the two
	body string // the object holding the message
}

// lookup returns the current state of id; an error wraps
// queue.ErrNotFound when there is none.
func (s *Store) lookup(ctx context.Context, id string) (*current, error) {
	if !queue.ValidID(id) {
		return nil, fmt.Errorf("%w: %q", queue.ErrBadID, id)
	}
	m, err := s.stream.GetLastMsgForSubject(ctx, s.idFilter(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
		}
		return nil, fmt.Errorf("jetstream: reading %s: %w", id, err)
	}
	_, q, ok := s.parseSubject(m.Subject)
	if !ok {
		return nil, fmt.Errorf("%w: %s: subject %q", queue.ErrCorrupt, id, m.Subject)
	}
	c := &current{q: q, seq: m.Sequence, subj: m.Subject, data: m.Data, body: m.Header.Get(hdrBody)}
	a, err := s.stream.GetLastMsgForSubject(ctx, s.attSubject(id))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return nil, fmt.Errorf("jetstream: reading %s: %w", id, err)
	default:
		c.att = a.Sequence
		if a.Sequence > m.Sequence {
			c.q, c.data, c.body = a.Header.Get(hdrQueue), a.Data, a.Header.Get(hdrBody)
		}
	}
	if c.body == "" {
		c.body = id
	}
	return c, nil
}

// Watch implements queue.Store: while fn is set, this node pulls the
// messages due from the shared consumer and reports each to fn (see
// queue.SharedStore).
func (s *Store) Watch(fn func(id, queue string)) {
	s.mu.Lock()
	s.wake = fn
	if fn != nil && s.pulling == nil {
		ctx, cancel := context.WithCancel(s.ctx)
		s.stop, s.pulling = cancel, make(chan struct{})
		go s.pull(ctx, s.pulling)
	}
	var stopped chan struct{}
	if fn == nil && s.pulling != nil {
		s.stop()
		stopped, s.pulling = s.pulling, nil
	}
	s.mu.Unlock()
	if stopped == nil {
		return
	}
	<-stopped
	// What the scheduler has not claimed goes back at once.
	s.mu.Lock()
	var back []*held
	for id, h := range s.held {
		if !h.taken {
			delete(s.held, id)
			back = append(back, h)
		}
	}
	s.mu.Unlock()
	for _, h := range back {
		close(h.done)
		h.msg.Nak()
	}
}

// pull fetches messages from the consumer while ctx lasts, keeping at most
// MaxHeld held.
func (s *Store) pull(ctx context.Context, done chan struct{}) {
	defer close(done)
	for ctx.Err() == nil {
		s.mu.Lock()
		n := s.cfg.MaxHeld - len(s.held)
		s.mu.Unlock()
		if n <= 0 {
			select {
			case <-s.room:
				continue
			case <-ctx.Done():
				return
			}
		}
		batch, err := s.cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
		if err == nil {
			for msg := range batch.Messages() {
				s.dispatch(ctx, msg)
			}
			err = batch.Error()
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			s.log.Warn("jetstream: fetching from the consumer", "consumer", s.cfg.Consumer, "error", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
}

// dispatch decides what to do with a message the consumer handed this
// node: a stale copy is acked away, one not due is nakked until it is, one
// due is held and reported to the scheduler.
//
// Only proof of a newer envelope acks a message away (an ack deletes it
// from the work-queue stream). The consumer may hand out a message before
// the stream leader, which answers the lookup, has applied it: its leader
// may be another server, a follower that applied the committed write
// first (seen in examples/doe-family's TestClusterFaults: a message with
// its 250 handed to a node 3 ms before the PubAck, looked up as "no such
// message", acked and lost). A lookup that finds nothing, or an envelope
// older than the one handed out, is such a lag, or a message removed
// since (which the consumer does not hand out again): both are nakked.
func (s *Store) dispatch(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	id, q, ok := s.parseSubject(msg.Subject())
	if !ok {
		msg.Term()
		return
	}
	lctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	look := s.lookup
	if s.dispatchLookup != nil {
		look = s.dispatchLookup
	}
	c, err := look(lctx, id)
	cancel()
	switch {
	case err == nil && c.seq > meta.Sequence.Stream:
		// A newer envelope replaced it (a move whose clean-up a crash cut
		// short): that one is the message.
		msg.Ack()
		return
	case err == nil && c.seq < meta.Sequence.Stream, errors.Is(err, queue.ErrNotFound):
		// The stream leader lags the consumer, or the message is gone.
		msg.NakWithDelay(lagDelay)
		return
	case err != nil:
		msg.NakWithDelay(time.Second)
		return
	}
	var next time.Time
	if env, err := queue.DecodeEnvelope(c.data); err == nil {
		q = c.q
		if !env.InFlight && env.Attempts > 0 {
			next = env.NextAttempt
		}
	}
	if wait := next.Sub(s.now()); wait > 0 {
		msg.NakWithDelay(wait)
		return
	}
	h := &held{msg: msg, seq: c.seq, done: make(chan struct{})}
	s.mu.Lock()
	if s.held[id] != nil {
		s.mu.Unlock()
		msg.NakWithDelay(s.cfg.AckWait)
		return
	}
	s.held[id] = h
	fn := s.wake
	s.mu.Unlock()
	s.wg.Add(1)
	go s.keepAlive(h)
	if fn != nil {
		fn(id, q)
	}
}

// keepAlive sends in-progress acks for h until it is let go.
func (s *Store) keepAlive(h *held) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
			h.msg.InProgress()
		}
	}
}

// letGo forgets the held message of id, if any, and returns it.
func (s *Store) letGo(id string) *held {
	s.mu.Lock()
	h := s.held[id]
	delete(s.held, id)
	s.mu.Unlock()
	if h != nil {
		close(h.done)
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
	return h
}

// Claim implements queue.SharedStore.
func (s *Store) Claim(id string) (func(), bool) {
	s.mu.Lock()
	h := s.held[id]
	if h == nil {
		s.mu.Unlock()
		return nil, false
	}
	h.taken = true
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		still := s.held[id] == h
		s.mu.Unlock()
		if !still {
			return // saved or removed: acked
		}
		s.letGo(id)
		wait := time.Until(h.next)
		if wait < time.Second {
			wait = time.Second
		}
		h.msg.NakWithDelay(wait)
	}, true
}

// IDs implements queue.Store.
func (s *Store) IDs(q string) ([]string, error) {
	qs, err := queueSubject(q)
	if err != nil {
		return nil, err
	}
	subjs, err := s.subjects(s.prefix + "env.*." + qs)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(subjs))
	for _, subj := range subjs {
		if id, sq, ok := s.parseSubject(subj); ok && sq == q {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// subjects returns the subjects of the stream's messages matching filter.
func (s *Store) subjects(filter string) ([]string, error) {
	ctx, cancel := s.opCtx()
	defer cancel()
	s.infoMu.Lock()
	info, err := s.info.Info(ctx, jetstream.WithSubjectFilter(filter))
	s.infoMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("jetstream: listing %s: %w", filter, err)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		out = append(out, subj)
	}
	return out, nil
}

// Queues implements queue.Store.
func (s *Store) Queues() ([]string, error) {
	qs := []string{queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt}
	subjs, err := s.subjects(s.prefix + "env.*.quarantine.*")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, subj := range subjs {
		if _, q, ok := s.parseSubject(subj); ok && !slices.Contains(names, q) {
			names = append(names, q)
		}
	}
	slices.Sort(names)
	return append(qs, names...), nil
}

// Lock implements queue.Store (this process only: see the package doc).
func (s *Store) Lock(ctx context.Context, id string) (func(), error) { return s.locks.Lock(ctx, id) }

// Load implements queue.Store. The body is copied to a temporary file
// (Config.TempDir), removed at once and closed with the message.
func (s *Store) Load(id string) (string, *queue.Envelope, *policy.Message, error) {
	ctx, cancel := s.opCtx()
	defer cancel()
	c, err := s.lookup(ctx, id)
	if err != nil {
		return "", nil, nil, err
	}
	env, err := queue.DecodeEnvelope(c.data)
	if err != nil {
		return c.q, nil, nil, fmt.Errorf("%s: %w", id, err)
	}
	if env.ID != id {
		return c.q, nil, nil, fmt.Errorf("%w: envelope of %s says id %q", queue.ErrCorrupt, id, env.ID)
	}
	if c.att != 0 && c.att < c.seq {
		env.InFlight = false // an attempt record older than the envelope is void
	}
	s.mu.Lock()
	if h := s.held[id]; h != nil {
		h.next = env.NextAttempt
	}
	s.mu.Unlock()
	m, err := s.openBodySure(ctx, c.body, env)
	if err != nil {
		return c.q, nil, nil, err
	}
	return c.q, env, m, nil
}

// openBody returns the message of env, read from object name.
func (s *Store) openBody(ctx context.Context, name string, env *queue.Envelope) (*policy.Message, error) {
	f, err := os.CreateTemp(s.cfg.TempDir, "mtaq-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	n, err := s.readObject(ctx, name, f)
	if err != nil {
		f.Close()
		switch {
		case errors.Is(err, jetstream.ErrObjectNotFound):
			return nil, fmt.Errorf("%w: message %s: body %s missing", queue.ErrCorrupt, env.ID, name)
		case errors.Is(err, jetstream.ErrDigestMismatch), errors.Is(err, errShortObject):
			return nil, fmt.Errorf("%w: message %s: %v", queue.ErrCorrupt, env.ID, err)
		}
		return nil, fmt.Errorf("jetstream: reading body of %s: %w", env.ID, err)
	}
	if n != env.Size {
		f.Close()
		return nil, fmt.Errorf("%w: message of %s has %d bytes, envelope says %d", queue.ErrCorrupt, env.ID, n, env.Size)
	}
	src := &msgSrc{Src: msgsrc.Src{File: f, Stored: env.Size}, env: env, name: name}
	if env.Head != nil {
		src.Head, src.Base = env.Head, env.BodyOff
	}
	m, err := policy.NewMessage(src, src.Size(), f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: message %s: %v", queue.ErrCorrupt, env.ID, err)
	}
	return m, nil
}

// msgSrc is a loaded message (see msgsrc.Src) over the body's local
// copy; Save recognises it to tell a header edit from a new body.
type msgSrc struct {
	msgsrc.Src
	env  *queue.Envelope
	name string // the object
}

// storedBody reports whether m's body is the stored body of env's message
// (object name), unchanged, and where it starts there.
func storedBody(env *queue.Envelope, m *policy.Message) (name string, off int64, ok bool) {
	sr, ok := m.Body().(*io.SectionReader)
	if !ok {
		return "", 0, false
	}
	outer, o, n := sr.Outer()
	src, ok := outer.(*msgSrc)
	if !ok || src.env != env {
		return "", 0, false
	}
	start, ok := src.InStored(o)
	if !ok || start+n != env.Size {
		return "", 0, false
	}
	return src.name, start, true
}

// chunkSize is the size of a body chunk (the object store's default).
const chunkSize = 128 << 10

// fullReader fills each Read's buffer whole (but at the end): the object
// store makes each Read a chunk, a publish (and, on a server syncing
// always, an fsync) of its own, and a message written through a pipe
// comes in small writes (a header line each), so a 4 KiB message made
// six chunks.
type fullReader struct{ r io.Reader }

func (f fullReader) Read(p []byte) (int, error) {
	n, err := io.ReadFull(f.r, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

// putBody stores a message body as object name; it returns its size.
//
// A body stored while the connection was lost and made again is not
// trusted: nats.go (up to v1.54; fixed in v1.55, which needs Go 1.26)
// forgets the pending acknowledgements of an object's chunks and meta when
// the connection drops, and ObjectStore.Put then returns success without
// them (the error callbacks it would have seen are deferred until the
// connection closes for good). TestClusterFaults caught it: a node whose
// NATS server was killed 18 ms before answered 250 for a message whose
// body was never stored, and the message was set aside as corrupt ("body
// missing"). Such a Put is an error here (the client gets 451 and sends
// again), and what it left is deleted.
func (s *Store) putBody(ctx context.Context, name string, write func(io.Writer) (int64, error)) (int64, error) {
	reconnects := s.nc.Stats().Reconnects
	pr, pw := io.Pipe()
	var n int64
	go func() {
		var err error
		n, err = write(pw)
		pw.CloseWithError(err)
	}()
	_, err := s.obj.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: chunkSize}}, fullReader{pr})
	pr.CloseWithError(errors.New("jetstream: body not stored"))
	if err == nil && (s.nc.Stats().Reconnects != reconnects || !s.nc.IsConnected()) {
		err = errReconnected
		s.obj.Delete(ctx, name)
	}
	if err != nil {
		return 0, fmt.Errorf("jetstream: storing body %s: %w", name, err)
	}
	return n, nil
}

// errReconnected is the error of a body stored across a reconnection (see
// putBody).
var errReconnected = errors.New("the connection to the servers was lost meanwhile; its acknowledgements may be missing")

// body prepares the envelope of a Save with message m: header edits go
// into env.Head (the body object is not copied), a replaced body into a
// new object, whose name is returned (with the old one, to delete after).
func (s *Store) body(ctx context.Context, env *queue.Envelope, m *policy.Message, cur string) (name, old string, err error) {
	if m == nil {
		return cur, "", nil
	}
	if stored, off, ok := storedBody(env, m); ok && stored == cur {
		env.Head, env.BodyOff = queue.HeadBytes(m), off
		return cur, "", nil
	}
	name = env.ID + "." + nats.NewInbox()[len(nats.InboxPrefix):]
	size, err := s.putBody(ctx, name, func(w io.Writer) (int64, error) { return m.WriteTo(w) })
	if err != nil {
		return "", "", err
	}
	env.Size, env.Head, env.BodyOff = size, nil, 0
	return name, cur, nil
}

// publish stores data as the envelope of id on subject subj, on condition
// that the id's last envelope is still sequence last (0: none). The
// message ID is unique to this call: a publish retried after a lost reply
// (at most twice) is de-duplicated by the stream, not applied twice.
func (s *Store) publish(ctx context.Context, id, subj string, data []byte, hdr nats.Header, last uint64) (*jetstream.PubAck, error) {
	msgID := id + ":" + strconv.FormatUint(last, 10) + ":" + nats.NewInbox()[len(nats.InboxPrefix):]
	var (
		ack *jetstream.PubAck
		err error
	)
	for try := 0; try < 3; try++ {
		msg := &nats.Msg{Subject: subj, Data: data, Header: hdr}
		ack, err = s.js.PublishMsg(ctx, msg,
			jetstream.WithExpectStream(s.cfg.Stream),
			jetstream.WithMsgID(msgID),
			jetstream.WithExpectLastSequenceForSubject(last, s.idFilter(id)))
		if err == nil || ctx.Err() != nil || !(errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse)) {
			break
		}
	}
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			if last == 0 {
				return nil, fmt.Errorf("%w: %s", queue.ErrExists, id)
			}
			return nil, fmt.Errorf("%w: %s changed meanwhile (by another node?)", queue.ErrNotFound, id)
		}
		return nil, fmt.Errorf("jetstream: storing envelope of %s: %w", id, err)
	}
	return ack, nil
}

// Save implements queue.Store.
func (s *Store) Save(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	c, err := s.check(ctx, env.ID, from, to)
	if err != nil {
		return err
	}
	if to != from {
		env.Moved = s.now()
	}
	name, old, err := s.body(ctx, env, m, c.body)
	if err != nil {
		return err
	}
	data, err := env.Encode()
	if err != nil {
		return err
	}
	subj, _ := s.envSubject(env.ID, to)
	if _, err := s.publish(ctx, env.ID, subj, data, nats.Header{hdrBody: {name}}, c.seq); err != nil {
		return err
	}
	// The new envelope is the message now; the rest is clean-up, which a
	// crash may cut short (a stale envelope is acked away when the
	// consumer hands it out; see dispatch).
	if h := s.letGo(env.ID); h != nil {
		h.msg.Ack()
	}
	if c.subj != subj {
		s.stream.DeleteMsg(ctx, c.seq)
	}
	if c.att != 0 {
		s.stream.DeleteMsg(ctx, c.att)
	}
	if old != "" {
		s.obj.Delete(ctx, old)
	}
	return nil
}

// check returns the current state of id, which must be in queue from; to
// must be a queue.
func (s *Store) check(ctx context.Context, id, from, to string) (*current, error) {
	if _, err := queueSubject(to); err != nil {
		return nil, err
	}
	c, err := s.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.q != from {
		return nil, fmt.Errorf("%w: %s is in %s, not %s", queue.ErrNotFound, id, c.q, from)
	}
	return c, nil
}

// SaveUnsynced implements queue.Store: it publishes the attempt record
// (mtaq.att.<id>), which the consumer does not hand out; a node that finds
// it newer than the envelope knows the attempt did not finish.
func (s *Store) SaveUnsynced(ctx context.Context, env *queue.Envelope, from, to string, m *policy.Message) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	c, err := s.check(ctx, env.ID, from, to)
	if err != nil {
		return err
	}
	if to != from {
		env.Moved = s.now()
	}
	name, old, err := s.body(ctx, env, m, c.body)
	if err != nil {
		return err
	}
	data, err := env.Encode()
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: s.attSubject(env.ID), Data: data, Header: nats.Header{hdrBody: {name}, hdrQueue: {to}}}
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(s.cfg.Stream)); err != nil {
		return fmt.Errorf("jetstream: recording attempt of %s: %w", env.ID, err)
	}
	s.mu.Lock()
	if h := s.held[env.ID]; h != nil {
		h.next = env.NextAttempt
	}
	s.mu.Unlock()
	if old != "" && old != env.ID {
		s.obj.Delete(ctx, old)
	}
	return nil
}

// Remove implements queue.Store.
func (s *Store) Remove(ctx context.Context, q, id string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	c, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	if c.q != q {
		return fmt.Errorf("%w: %s is in %s, not %s", queue.ErrNotFound, id, c.q, q)
	}
	if err := s.stream.DeleteMsg(ctx, c.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("jetstream: removing %s: %w", id, err)
	}
	if h := s.letGo(id); h != nil {
		h.msg.Ack()
	}
	if c.att != 0 {
		s.stream.DeleteMsg(ctx, c.att)
	}
	if err := s.obj.Delete(ctx, c.body); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		s.log.Warn("jetstream: body of a removed message left behind", "id", id, "object", c.body, "error", err)
	}
	return nil
}

// SetAside implements queue.Store: the envelope moves, as it is, to the
// corrupt queue.
func (s *Store) SetAside(ctx context.Context, q, id string, cause error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	s.log.Error("queue: corrupt entry set aside", "id", id, "queue", q, "error", cause)
	c, err := s.lookup(ctx, id)
	if err == nil && c.q == queue.Corrupt {
		return
	}
	if err == nil {
		subj, _ := s.envSubject(id, queue.Corrupt)
		_, err = s.publish(ctx, id, subj, c.data, nats.Header{hdrBody: {c.body}}, c.seq)
	}
	if err != nil {
		s.log.Error("queue: could not set corrupt entry aside", "id", id, "error", err)
		return
	}
	if h := s.letGo(id); h != nil {
		h.msg.Ack()
	}
	s.stream.DeleteMsg(ctx, c.seq)
	if c.att != 0 {
		s.stream.DeleteMsg(ctx, c.att)
	}
}

// Add implements queue.Store.
func (s *Store) Add(ctx context.Context, env *queue.Envelope, q string, write func(io.Writer) (int64, error)) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if !queue.ValidID(env.ID) {
		return fmt.Errorf("%w: %q", queue.ErrBadID, env.ID)
	}
	if len(env.Rcpts) == 0 {
		return queue.ErrNoRcpts
	}
	subj, err := s.envSubject(env.ID, q)
	if err != nil {
		return err
	}
	// Refused before its body is written over an existing message's.
	if _, err := s.lookup(ctx, env.ID); err == nil {
		return fmt.Errorf("%w: %s", queue.ErrExists, env.ID)
	} else if !errors.Is(err, queue.ErrNotFound) {
		return err
	}
	if env.NextAttempt.IsZero() {
		env.NextAttempt = s.now()
	}
	n, err := s.putBody(ctx, env.ID, write)
	if err != nil {
		return err
	}
	env.Size = n
	data, err := env.Encode()
	if err != nil {
		return err
	}
	if _, err := s.publish(ctx, env.ID, subj, data, nats.Header{hdrBody: {env.ID}}, 0); err != nil {
		return err
	}
	return nil
}

// Enqueue implements smtp.Queue: it stores an accepted message and returns
// nil only after the PubAcks of its body and its envelope (see the package
// doc for what they guarantee). tx.ID is the queue ID (policy.NewID when
// empty). A transaction with tx.Quarantine() set goes straight to that
// quarantine queue. An error means the message is not queued: the caller
// answers 4xx.
func (s *Store) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if m == nil {
		return queue.ErrNoMessage
	}
	if tx.ID == "" {
		tx.ID = policy.NewID()
	}
	q := queue.Working
	if name := tx.Quarantine(); name != "" {
		q = queue.QuarantinePrefix + name
	}
	env, err := queue.NewEnvelope(tx, s.now())
	if err != nil {
		return err
	}
	if err := s.Add(ctx, env, q, func(w io.Writer) (int64, error) { return m.WriteTo(w) }); err != nil {
		return err
	}
	if q != queue.Working {
		// Quarantined before the queue: its recipients' delivery ends here.
		queue.LogQuarantined(ctx, s.log, env, q, s.now())
	}
	return nil
}
