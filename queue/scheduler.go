package queue

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// Transport hands a message to some recipients; one policy.Reply per d.Rcpts entry, in order (2xx delivered, 4xx retry, 5xx bounce).
type Transport interface {
	Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply
}

// TransportFunc adapts a function to Transport.
type TransportFunc func(ctx context.Context, d *policy.Delivery) []policy.Reply

// Deliver calls f.
func (f TransportFunc) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	return f(ctx, d)
}

// DropTransport is the name of the built-in transport that reports every
// recipient delivered without delivering anything.
const DropTransport = "drop"

// Clock is the scheduler's source of time; tests inject a fake one so that
// retries are tested without sleeping.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a Scheduler. Zero fields take the defaults given.
type Config struct {
	// Chain holds the postq and delivery rules (nil: no rules).
	Chain *policy.Chain
	// Transports maps Route.Transport names to transports ("maildir",
	// "mbox", "lmtp", "smtp", ...). "drop" is built in.
	Transports map[string]Transport
	// DefaultRoute is used for a recipient whose delivery rules left the
	// route zero. Zero means {Transport: "smtp"}.
	DefaultRoute policy.Route
	// Workers bounds the messages processed at once (default 16).
	Workers int
	// MinBackoff, MaxBackoff: the delay after the first failed attempt,
	// doubled after each, capped (defaults 5 min, 4 h, as Postfix).
	MinBackoff, MaxBackoff time.Duration
	// Lifetime: a message still undelivered this long after its arrival
	// fails and bounces (default 5 days).
	Lifetime time.Duration
	// Jitter spreads retries by ±Jitter of the delay (default 0.1;
	// negative: none).
	Jitter float64
	// DelayWarning: a recipient that asked for delay notifications
	// (NOTIFY=DELAY, RFC 3461) and is still undelivered this long after
	// its message arrived gets a DSN with Action: delayed, and another
	// every DelayRepeat after that until it is delivered or fails. Zero
	// means 4 hours (Postfix's delay_warning_time, where it is on);
	// negative: no delay notifications. DelayRepeat zero means 24 hours.
	// Recipients without NOTIFY get none (RFC 3461 leaves it to the MTA).
	DelayWarning, DelayRepeat time.Duration
	// Retention: messages in dead and in the quarantine queues are
	// deleted this long after they came there, each deletion logged with
	// its ID, queue and age; the scheduler looks for them when it starts
	// and then every hour (or every Retention, when shorter). Zero means
	// 30 days; negative: they are kept until deleted by hand.
	Retention time.Duration
	// AttemptTimeout bounds one transport call (default 10 min).
	AttemptTimeout time.Duration
	// InFlowLimit and InFlowDelay are the in-flow control of Admit, as
	// Postfix's in_flow_delay: while more than InFlowLimit messages are
	// due and wait for a worker, Admit makes a new message wait until
	// fewer do, for at most InFlowDelay, so that clients sending faster
	// than the queue delivers are slowed to its pace and the queue stays
	// bounded. Zero means 10,000 messages and 1 second; negative: no
	// in-flow control.
	InFlowLimit int
	InFlowDelay time.Duration
	// Hostname names this MTA in DSNs (Reporting-MTA, Message-ID, the
	// From address unless BounceFrom is set). Default os.Hostname().
	Hostname string
	// BounceFrom is the From address of the messages the scheduler
	// generates (DSNs, delay warnings); their envelope sender is always
	// the null sender. Zero means MAILER-DAEMON@Hostname, as Postfix does.
	// Set it to an address of the mail domain (MAILER-DAEMON@example.com,
	// postmaster@example.com) whose DKIM key signs them at postq, so that
	// they align and pass DMARC where they arrive.
	BounceFrom policy.Address
	// MaxReturnSize: a DSN includes the whole original message up to this
	// size, only its header above it or when the sender asked RET=HDRS
	// (default 10 MiB).
	MaxReturnSize int64
	// Clock is the time source (default the real clock).
	Clock Clock
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Events, when set, is told of delivery attempts and DSNs, for
	// metrics (see Events). Nil: nothing is reported.
	Events Events
}

// Scheduler runs queued messages through the postq rules, the delivery
// rules and the transports, with a bounded pool of workers, and retries
// temporary failures with exponential backoff.
//
// Every outcome is made durable before the next step: the next attempt time
// is saved before each attempt; per-recipient results and the move to
// deferred, dead or removal after it. A crash between a delivery and its
// record may deliver a message twice (at least once), never zero times. A
// delivered message whose removal fails, or a message whose outcome
// record fails (some recipients delivered, others deferred or failed), is
// not delivered again by this Scheduler to the recipients it delivered:
// the removal or the record is retried until it succeeds or Run stops
// (see the package doc, "Scheduler").
type Scheduler struct {
	st  Store
	cfg Config
	log *slog.Logger
	// syncs, when set, are the syncfs(2) rounds of a Spool that Maildir
	// deliveries join instead of making their own syncs: how it was done
	// before issue 21, kept for BenchmarkSpoolMaildir to compare. Never set
	// otherwise (see Maildir): measured, the Maildir's own syncs were
	// about as fast alone on the filesystem and up to 2-3x faster with
	// another writer on it.
	syncs *fsSyncs
	// shared is st when it is a SharedStore, which decides when each
	// message is worked on (no start-up scan, no retry timers).
	shared SharedStore

	mu      sync.Mutex
	ready   []string
	state   map[string]int // stReady, stRunning, stAgain
	timers  timerHeap
	timerAt map[string]time.Time
	kick    chan struct{}
	// runCtx is Run's context while it runs (nil otherwise); running
	// counts the workers, which wg waits for.
	runCtx  context.Context
	running int
	wg      sync.WaitGroup

	// pending holds the messages whose last step the store refused: a
	// removal after their delivery (or return to their senders), or the
	// record of an attempt's outcome (see remove.go). This scheduler does
	// not deliver them meanwhile, and its retrier retries the steps while
	// Run runs (retrierOn). Guarded by mu.
	pending   map[string]*pendingStep
	retrierOn bool

	// room, when not nil, is closed once no more than InFlowLimit
	// messages wait for a worker: Admit's callers wait on it. Guarded by
	// mu.
	room chan struct{}

	afterWork  func(id string) // test hook: called when a worker is done with id
	afterPurge func()          // test hook: called after each retention run
}

const (
	stReady = iota + 1
	stRunning
	stAgain // running, and woken again meanwhile
)

// NewScheduler returns a scheduler for the messages of sp.
func NewScheduler(st Store, cfg Config) *Scheduler {
	if cfg.Chain == nil {
		cfg.Chain = policy.NewChain()
	}
	if cfg.DefaultRoute == (policy.Route{}) {
		cfg.DefaultRoute = policy.Route{Transport: "smtp"}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 5 * time.Minute
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 4 * time.Hour
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 5 * 24 * time.Hour
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.1
	}
	if cfg.DelayWarning == 0 {
		cfg.DelayWarning = 4 * time.Hour
	}
	if cfg.DelayRepeat <= 0 {
		cfg.DelayRepeat = 24 * time.Hour
	}
	if cfg.Retention == 0 {
		cfg.Retention = 30 * 24 * time.Hour
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 10 * time.Minute
	}
	if cfg.InFlowLimit == 0 {
		cfg.InFlowLimit = 10000
	}
	if cfg.InFlowDelay == 0 {
		cfg.InFlowDelay = time.Second
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
		if cfg.Hostname == "" {
			cfg.Hostname = "localhost"
		}
	}
	if cfg.BounceFrom.IsNull() {
		cfg.BounceFrom = policy.Address{Local: "MAILER-DAEMON", Domain: cfg.Hostname}
	}
	if cfg.MaxReturnSize <= 0 {
		cfg.MaxReturnSize = 10 << 20
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Scheduler{
		st: st, cfg: cfg, log: cfg.Logger,
		state: map[string]int{}, timerAt: map[string]time.Time{}, pending: map[string]*pendingStep{},
		kick: make(chan struct{}, 1),
	}
	s.shared, _ = st.(SharedStore)
	return s
}

// Run picks up every message in working, deliver and deferred (with a
// SharedStore: those the store hands this process) and processes messages
// until ctx ends; then it waits for the attempts under way and
// returns ctx's error. Messages enqueued, requeued or moved while it runs
// are picked up at once. Run one scheduler per store at a time (per
// process with a SharedStore), and stop it before closing the store.
func (s *Scheduler) Run(ctx context.Context) error {
	defer func() {
		s.mu.Lock()
		s.runCtx = nil // no worker starts any more
		s.mu.Unlock()
		s.wg.Wait()
	}()
	s.st.Watch(s.wake)
	defer s.st.Watch(nil)
	// The scan only queues: were workers started by it, a message enqueued
	// meanwhile could be started by its notify and queued again by the
	// scan, and run twice. A shared store hands over its messages itself.
	for _, q := range s.scanned() {
		ids, err := s.st.IDs(q)
		if err != nil {
			return err
		}
		for _, id := range ids {
			s.wake(id, q)
		}
	}
	s.mu.Lock()
	s.runCtx = ctx
	s.startRetrier() // steps left pending by an earlier Run
	s.mu.Unlock()
	if s.cfg.Retention > 0 {
		s.wg.Add(1)
		go s.retain(ctx)
	}
	for {
		s.mu.Lock()
		now := s.cfg.Clock.Now()
		for len(s.timers) > 0 && !s.timers[0].at.After(now) {
			t := heap.Pop(&s.timers).(timer)
			if at, ok := s.timerAt[t.id]; ok && at.Equal(t.at) {
				delete(s.timerAt, t.id)
				s.pushReady(t.id)
			}
		}
		s.startWorkers()
		var tc <-chan time.Time
		if len(s.timers) > 0 {
			tc = s.cfg.Clock.After(s.timers[0].at.Sub(now))
			if s.cfg.Clock.Now().Sub(now) >= time.Second {
				// The clock jumped while the timer was set (a test
				// clock's Advance, the wall clock set forward): the
				// timer counts from the old now, so look again.
				s.mu.Unlock()
				continue
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.kick:
		case <-tc:
		}
	}
}

// startWorkers starts workers for the ready messages, up to Workers at
// once, while Run runs; s.mu is held. Starting them here, rather than in
// Run's loop, spares a message two hand-offs to that loop (on arrival and
// when done), each a goroutine wake-up.
func (s *Scheduler) startWorkers() {
	for s.runCtx != nil && s.runCtx.Err() == nil && s.running < s.cfg.Workers && len(s.ready) > 0 {
		s.running++
		s.wg.Add(1)
		go s.worker(s.runCtx, s.popReady())
	}
}

// popReady takes the next ready message; s.mu is held.
func (s *Scheduler) popReady() string {
	id := s.ready[0]
	s.ready = s.ready[1:]
	s.state[id] = stRunning
	if s.room != nil && len(s.ready) <= s.cfg.InFlowLimit {
		close(s.room)
		s.room = nil
	}
	return id
}

// Admit applies in-flow control to a new message, before it is stored
// (mtakit.Server calls it for every message its smtp server accepts, so
// that the client waits before its 250): while more than
// Config.InFlowLimit messages are due and wait for a worker, it waits
// until fewer do or for Config.InFlowDelay, whichever comes first, and
// returns nil; ctx's error if ctx ends first. It does not wait while Run
// does not run (no worker takes messages then).
func (s *Scheduler) Admit(ctx context.Context) error {
	if s.cfg.InFlowLimit < 0 || s.cfg.InFlowDelay < 0 {
		return nil
	}
	s.mu.Lock()
	if s.runCtx == nil || s.runCtx.Err() != nil || len(s.ready) <= s.cfg.InFlowLimit {
		s.mu.Unlock()
		return nil
	}
	if s.room == nil {
		s.room = make(chan struct{})
	}
	room := s.room
	s.mu.Unlock()
	select {
	case <-room:
	case <-s.cfg.Clock.After(s.cfg.InFlowDelay):
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// worker works on id, then on the next ready messages until there are
// none or Run is stopping.
func (s *Scheduler) worker(ctx context.Context, id string) {
	defer s.wg.Done()
	for {
		s.work(ctx, id)
		s.mu.Lock()
		s.finished(id)
		if ctx.Err() != nil || len(s.ready) == 0 {
			s.running--
			s.mu.Unlock()
			return
		}
		id = s.popReady()
		s.mu.Unlock()
	}
}

// finished records that the worker of id is done with it; s.mu is held.
func (s *Scheduler) finished(id string) {
	if s.state[id] == stAgain {
		s.state[id] = stReady
		s.ready = append(s.ready, id)
		return
	}
	delete(s.state, id)
}

// pushReady queues id for a worker; s.mu is held.
func (s *Scheduler) pushReady(id string) {
	switch s.state[id] {
	case stReady, stAgain:
	case stRunning:
		s.state[id] = stAgain
	default:
		s.state[id] = stReady
		s.ready = append(s.ready, id)
	}
}

// wake is called by the spool when id arrived in queue q.
func (s *Scheduler) wake(id, q string) {
	if q != Working && q != Deliver && q != Deferred {
		return
	}
	s.mu.Lock()
	delete(s.timerAt, id)
	s.pushReady(id)
	s.startWorkers()
	s.mu.Unlock()
}

func (s *Scheduler) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// scanned returns the queues Run scans when it starts: none for a shared
// store, whose Watch reports the waiting messages.
func (s *Scheduler) scanned() []string {
	if s.shared != nil {
		return nil
	}
	return []string{Working, Deliver, Deferred}
}

// retryAt schedules id for time at. With a shared store it does nothing:
// the store brings the message back when its NextAttempt is due.
func (s *Scheduler) retryAt(id string, at time.Time) {
	if s.shared != nil {
		return
	}
	s.mu.Lock()
	s.timerAt[id] = at
	heap.Push(&s.timers, timer{at: at, id: id})
	s.mu.Unlock()
	s.poke()
}

// work processes one message; it never panics.
func (s *Scheduler) work(ctx context.Context, id string) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("queue: worker panicked", "id", id, "panic", p, "stack", string(debug.Stack()))
		}
		if s.afterWork != nil {
			s.afterWork(id)
		}
	}()
	unlock, err := s.st.Lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	if s.shared != nil {
		release, ok := s.shared.Claim(id)
		if !ok {
			return // taken by an operator or another process meanwhile
		}
		defer s.releaseClaim(id, release)
	}
	if p := s.pendingOf(id); p != nil {
		if p.env == nil {
			s.log.Debug("queue: delivered already, its removal pending: not delivered again", "id", id)
			return
		}
		// The store has the message as its attempt record left it, with
		// recipients pending that the attempt delivered: record the
		// outcome (its retrier goes on if that fails), deliver nothing.
		s.log.Debug("queue: outcome of its last attempt not recorded yet: not delivered again; recording it", "id", id)
		s.retry(context.WithoutCancel(ctx), id)
		return
	}
	q, env, m, err := s.st.Load(id)
	switch {
	case errors.Is(err, ErrNotFound):
		return // delivered or deleted meanwhile
	case err != nil:
		if q == Working || q == Deliver || q == Deferred {
			s.corrupt(ctx, q, id, err)
		}
		return
	}
	defer m.Close()
	if q != Working && q != Deliver && q != Deferred {
		return
	}
	base := storedOf(q, env) // what the store has, to tell an operator's change later
	now := s.cfg.Clock.Now()
	resume := false
	if env.InFlight && (q == Deferred || q == Deliver) {
		if resume = s.interrupted(ctx, q, env); !resume && env.InFlight {
			return // could not record it: retried later
		}
		if !resume {
			base = storedOf(q, env) // interrupted saved it
		}
	}
	if !resume && env.Attempts > 0 && env.NextAttempt.After(now) && (q == Deferred || q == Deliver) {
		// Not time for an attempt; maybe for a delay notification.
		if due := s.delayDue(env); !due.IsZero() && !due.After(now) {
			wctx := context.WithoutCancel(ctx) // a stop does not cut it in half
			if s.warnDelayed(wctx, env, m, now) {
				if err := s.st.Save(wctx, env, q, q, nil); err != nil {
					// Kept, not warned again meanwhile (see recordLater).
					s.recordLater(recDelay, q, env, base, err)
					return
				}
			}
		}
		s.retryAt(id, s.wakeAt(env, now))
		return
	}
	// Rules and transports run under ctx, so that stopping the scheduler
	// cuts them short (they then defer); what the spool records of their
	// outcome is written even while stopping, so nothing done is lost.
	rctx := ctx
	ctx = context.WithoutCancel(ctx)
	var edited *policy.Message
	if !env.PostQDone {
		var ok bool
		if edited, ok = s.postq(ctx, rctx, base, env, m); !ok {
			return
		}
	}
	s.deliver(ctx, rctx, base, env, m, edited)
}

// maxCrashes is the number of attempts in a row that the process may stop
// during (a crash, kill -9) before the message waits for its backoff:
// below it, an interrupted attempt is made again at once.
const maxCrashes = 3

// interrupted handles a message whose last attempt did not finish: the
// process stopped during it (env.InFlight). It counts the crash and
// reports whether the attempt is to be made again at once, whatever
// env.NextAttempt says: yes for the first maxCrashes-1 crashes in a row, so
// that a restart puts the mail back to work as Postfix does; then the
// message backs off as after a temporary failure (its NextAttempt was
// saved with the attempt record), so that a message that crashes the
// process every time cannot keep it in a crash loop. In that case the
// count is saved now (env.InFlight left set if that failed).
func (s *Scheduler) interrupted(ctx context.Context, q string, env *Envelope) bool {
	env.InFlight = false
	env.Crashes++
	if env.Crashes < maxCrashes {
		s.log.Info(fmt.Sprintf("queue: delivery attempt %d of message %s did not finish: the process stopped during it; trying again now", env.Attempts, env.ID),
			"id", env.ID, "attempt", env.Attempts, "crashes", env.Crashes)
		return true
	}
	s.log.Warn(fmt.Sprintf("queue: delivery attempt %d of message %s did not finish: the process stopped during it; backing off", env.Attempts, env.ID),
		"id", env.ID, "attempt", env.Attempts, "crashes", env.Crashes, "next", env.NextAttempt)
	if err := s.st.Save(context.WithoutCancel(ctx), env, q, q, nil); err != nil {
		env.InFlight = true
		s.log.Error("queue: cannot record interrupted attempt", "id", env.ID, "error", err)
		s.retryAt(env.ID, s.cfg.Clock.Now().Add(s.cfg.MinBackoff))
	}
	return false
}

func (s *Scheduler) corrupt(ctx context.Context, q, id string, err error) {
	if errors.Is(err, ErrCorrupt) {
		s.st.SetAside(ctx, q, id, err)
		return
	}
	// Our own trouble (I/O): try again later.
	s.log.Error("queue: cannot read entry", "id", id, "queue", q, "error", err)
	s.retryAt(id, s.cfg.Clock.Now().Add(s.cfg.MinBackoff))
}

// headerBufs holds the buffers of headerCopy.
var headerBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// headerCopy returns the header as it would be written, in a pooled
// buffer (putHeaderCopy gives it back).
func headerCopy(h *policy.Header) *bytes.Buffer {
	b := headerBufs.Get().(*bytes.Buffer)
	b.Reset()
	b.Grow(int(h.Size()))
	h.WriteTo(b)
	return b
}

func putHeaderCopy(b *bytes.Buffer) {
	if b.Cap() <= 64<<10 {
		headerBufs.Put(b)
	}
}

// headerIs reports whether h would be written as b, without writing it
// out again.
func headerIs(h *policy.Header, b []byte) bool {
	if h.Size() != int64(len(b)) {
		return false
	}
	c := &prefixWriter{rest: b}
	_, err := h.WriteTo(c)
	return err == nil && len(c.rest) == 0
}

// prefixWriter checks that what is written is a prefix of rest, consuming it.
type prefixWriter struct{ rest []byte }

var errDiffers = errors.New("differs")

func (c *prefixWriter) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(c.rest, p) {
		return 0, errDiffers
	}
	c.rest = c.rest[len(p):]
	return len(p), nil
}

// postq runs the postq rules and reports whether delivery goes on; then
// env.PostQDone is set and edited is m when the rules changed its header,
// for deliver to save with its attempt record (one commit, not two). base
// is what the store has of it (in queue base.q).
func (s *Scheduler) postq(ctx, rctx context.Context, base stored, env *Envelope, m *policy.Message) (edited *policy.Message, ok bool) {
	q := base.q
	tx := env.Transaction(RcptPending)
	before := headerCopy(m.Header)
	res := s.cfg.Chain.EvalPostQ(rctx, tx, m)
	changed := !headerIs(m.Header, before.Bytes())
	putHeaderCopy(before)
	var log *slog.Logger // for the outcomes that log, made only for them
	if k := res.Verdict.Kind; k == policy.KindDeny || k == policy.KindQuarantine {
		log = s.postqLog(env.ID, res.Rule)
	}
	switch res.Verdict.Kind {
	case policy.KindDeny:
		att := newAttempt(env) // the rules do not change env's recipients
		att.stored = base
		if res.Reply.Permanent() {
			log.Info("queue: postq denied; bouncing", "reply", res.Reply.String())
			for i := range env.Rcpts {
				if env.Rcpts[i].State == RcptPending {
					env.Rcpts[i].State, env.Rcpts[i].Reply = RcptFailed, res.Reply
				}
			}
			s.finish(ctx, q, env, m, att)
			return nil, false
		}
		log.Warn("queue: postq deferred", "reply", res.Reply.String())
		now := s.cfg.Clock.Now()
		env.Attempts++
		env.LastAttempt = now
		env.NextAttempt = s.next(env, now)
		env.LastError = "postq: " + res.Reply.String()
		for i := range env.Rcpts {
			if env.Rcpts[i].State == RcptPending {
				env.Rcpts[i].Reply = res.Reply
			}
		}
		s.finish(ctx, q, env, m, att)
		return nil, false
	case policy.KindQuarantine:
		to := QuarantinePrefix + res.Verdict.Queue
		env.Quarantine = &QuarantineNote{Queue: to, Stage: "postq", Rule: res.Rule, Reason: res.Verdict.Reply.Text, At: s.cfg.Clock.Now()}
		if err := s.save(ctx, env, m, q, to, changed); err != nil {
			log.Error("queue: cannot quarantine", "error", err)
			s.retryAt(env.ID, s.cfg.Clock.Now().Add(s.cfg.MinBackoff))
			return nil, false
		}
		log.Info("queue: quarantined", "queue", to)
		LogQuarantined(ctx, s.log, env, to, s.cfg.Clock.Now())
		return nil, false
	}
	env.PostQDone = true
	if changed {
		return m, true
	}
	return nil, true
}

// postqLog returns the logger of a postq outcome of message id: the rule
// attribute only when a rule decided (rule is not ""), never rule="".
func (s *Scheduler) postqLog(id, rule string) *slog.Logger {
	if rule == "" {
		return s.log.With("id", id, "stage", "postq")
	}
	return s.log.With("id", id, "stage", "postq", "rule", rule)
}

// save stores env, moving it from q to "to", with the message's header
// edits when changed.
func (s *Scheduler) save(ctx context.Context, env *Envelope, m *policy.Message, q, to string, changed bool) error {
	if !changed {
		m = nil
	}
	return s.st.Save(ctx, env, q, to, m)
}

// next returns the time of the attempt after the one starting at now.
func (s *Scheduler) next(env *Envelope, now time.Time) time.Time {
	d := s.cfg.MinBackoff
	for i := 1; i < env.Attempts && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	if s.cfg.Jitter > 0 {
		d += time.Duration((rand.Float64()*2 - 1) * s.cfg.Jitter * float64(d))
	}
	at := now.Add(d)
	if end := env.Received.Add(s.cfg.Lifetime); at.After(end) {
		at = end
	}
	if !at.After(now) {
		at = now.Add(time.Second)
	}
	return at
}

type group struct {
	route policy.Route
	idx   []int
}

// deliver runs the delivery rules per pending recipient, hands each route's
// recipients to its transport and records the outcome.
//
// Before the attempt, the attempt and the time of the next one are saved
// (so a crash loop cannot hammer a destination), together with the
// outcome of postq when it just ran: the move out of working and the
// header edits (edited not nil). base is what the store has of the
// message (in queue base.q).
func (s *Scheduler) deliver(ctx, rctx context.Context, base stored, env *Envelope, m, edited *policy.Message) {
	q := base.q
	now := s.cfg.Clock.Now()
	att := newAttempt(env)
	att.stored = base
	to := q
	if q == Working {
		to = Deliver
	}
	if env.pending() || to != q || edited != nil {
		env.Attempts++
		env.LastAttempt = now
		env.NextAttempt = s.next(env, now)
		env.InFlight = true // cleared by the record of the outcome
		// Not synced: a process that crashes during the attempt finds the
		// record (no crash loop hammering a destination), and a machine
		// that loses it runs postq and the attempt again, which at least
		// once delivery allows. Syncing here cost a sync, two directory
		// syncs and a rename's wait per message.
		if err := s.st.SaveUnsynced(ctx, env, q, to, edited); err != nil {
			env.InFlight = false
			s.log.Error("queue: cannot record attempt", "id", env.ID, "error", err)
			s.retryAt(env.ID, now.Add(s.cfg.MinBackoff))
			return
		}
		q = to
		att.stored = storedOf(q, env)
	}
	tx := env.Transaction(RcptPending)
	var groups []*group
	byRoute := map[policy.Route]*group{}
	var quarantine policy.Result
	for i := range env.Rcpts {
		r := &env.Rcpts[i]
		if r.State != RcptPending {
			continue
		}
		var route policy.Route
		res := s.cfg.Chain.EvalDelivery(rctx, tx, r.Recipient(), &route)
		switch res.Verdict.Kind {
		case policy.KindDeny:
			r.Reply = res.Reply
			if res.Reply.Permanent() {
				r.State = RcptFailed
			}
			continue
		case policy.KindQuarantine:
			quarantine = res
			continue
		}
		if route == (policy.Route{}) {
			route = s.cfg.DefaultRoute
		}
		att.rcpts[i].route = route
		g := byRoute[route]
		if g == nil {
			g = &group{route: route}
			byRoute[route] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	if quarantine.Verdict.Kind == policy.KindQuarantine {
		env.InFlight, env.Crashes = false, 0
		to := QuarantinePrefix + quarantine.Verdict.Queue
		env.Quarantine = &QuarantineNote{Queue: to, Stage: "delivery", Rule: quarantine.Rule, Reason: quarantine.Verdict.Reply.Text, At: s.cfg.Clock.Now()}
		if err := s.st.Save(ctx, env, q, to, nil); err != nil {
			s.log.Error("queue: cannot quarantine", "id", env.ID, "error", err)
			s.retryAt(env.ID, env.NextAttempt)
		} else {
			s.log.Info("queue: quarantined at delivery", "id", env.ID, "queue", to)
			LogQuarantined(ctx, s.log, env, to, s.cfg.Clock.Now())
		}
		return
	}
	for _, g := range groups {
		rcpts := make([]policy.Recipient, len(g.idx))
		for j, i := range g.idx {
			rcpts[j] = env.Rcpts[i].Recipient()
		}
		replies := s.transport(rctx, &policy.Delivery{Tx: tx, Rcpts: rcpts, Route: g.route, Message: m})
		s.attempted(g.route.Transport, replies, env.Received)
		for j, i := range g.idx {
			r := &env.Rcpts[i]
			rep := replies[j]
			r.Reply = rep
			switch {
			case rep.Code >= 200 && rep.Code < 300:
				r.State = RcptDelivered
			case rep.Permanent():
				r.State = RcptFailed
			}
			// The result line (finish) says it at INFO.
			s.log.Debug("queue: delivery", "id", env.ID, "rcpt", r.Addr.Address().String(),
				"transport", g.route.Transport, "target", g.route.Target, "reply", rep.String(), "state", r.State)
		}
	}
	s.finish(ctx, q, env, m, att)
}

var (
	replyNoTransport  = policy.Reply{Code: 451, Enhanced: "4.3.5", Text: "Transport not configured"}
	replyBadTransport = policy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Transport error"}
	replyDropped      = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "Dropped"}
)

// transport calls the route's transport, making sure of one valid reply
// per recipient: a panic, a missing or malformed reply is a temporary
// failure of ours.
func (s *Scheduler) transport(ctx context.Context, d *policy.Delivery) (replies []policy.Reply) {
	n := len(d.Rcpts)
	fill := func(r policy.Reply) []policy.Reply {
		out := make([]policy.Reply, n)
		for i := range out {
			out[i] = r
		}
		return out
	}
	if d.Route.Transport == DropTransport {
		return fill(replyDropped)
	}
	t := s.cfg.Transports[d.Route.Transport]
	if t == nil {
		s.log.Error("queue: unknown transport (configuration error); deferring", "id", d.Tx.ID, "transport", d.Route.Transport)
		return fill(replyNoTransport)
	}
	ctx, cancel := lazyctx.WithTimeout(ctx, s.cfg.AttemptTimeout) // local transports never wait on it
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("queue: transport panicked", "id", d.Tx.ID, "transport", d.Route.Transport, "panic", p, "stack", string(debug.Stack()))
			replies = fill(replyBadTransport)
		}
	}()
	var got []policy.Reply
	if md, ok := t.(*Maildir); ok && s.syncs != nil {
		got = md.deliver(ctx, d, s.syncs) // benchmarks only: see syncs
	} else {
		got = t.Deliver(ctx, d)
	}
	if len(got) != n {
		s.log.Error("queue: transport gave wrong number of replies", "id", d.Tx.ID, "transport", d.Route.Transport, "want", n, "got", len(got))
	}
	out := make([]policy.Reply, n)
	for i := range out {
		if i < len(got) && got[i].Code >= 200 && got[i].Code < 600 && (got[i].Code < 300 || got[i].Code >= 400) {
			out[i] = got[i]
		} else {
			out[i] = replyBadTransport
		}
	}
	return out
}

// finish records the outcome of an attempt: DSNs for recipients that
// reached a final state and asked for one, then deferred (recipients
// left), dead (some failed) or removal (all delivered).
//
// It writes the result line of every recipient att saw pending (see
// results.go).
func (s *Scheduler) finish(ctx context.Context, q string, env *Envelope, m *policy.Message, att *attempt) {
	now := s.cfg.Clock.Now()
	// The attempt (if one was made) finished: its outcome is recorded below.
	env.InFlight, env.Crashes = false, 0
	if env.pending() && !now.Before(env.Received.Add(s.cfg.Lifetime)) {
		for i := range env.Rcpts {
			r := &env.Rcpts[i]
			if r.State == RcptPending {
				r.State = RcptFailed
				code, last := r.Reply.Code, r.Reply.String()
				if r.Reply.IsZero() {
					code, last = 451, "none"
				}
				r.Reply = policy.Reply{Code: code, Enhanced: "4.4.7", Text: "Message expired; last error: " + last}
				att.rcpts[i].expired = true
			}
		}
		s.log.Warn("queue: message expired", "id", env.ID, "received", env.Received)
	}
	s.logResults(ctx, env, att)
	if err := s.report(ctx, env, m); err != nil {
		// The DSN could not be queued: keep the message deferred so that
		// the next attempt queues it.
		s.log.Error("queue: cannot queue DSN", "id", env.ID, "error", err)
		if !env.pending() {
			env.NextAttempt = now.Add(s.cfg.MinBackoff)
		}
		s.moveOn(ctx, q, Deferred, env, att)
		return
	}
	switch {
	case env.pending():
		if due := s.delayDue(env); !due.IsZero() && !due.After(now) {
			s.warnDelayed(ctx, env, m, now) // recorded with the move below
		}
		env.LastError = rcptErrors(env, RcptPending)
		s.moveOn(ctx, q, Deferred, env, att)
	case env.Returned:
		// Bounced by an operator (Spool.Bounce): returned to its sender
		// above, it is deleted, not kept in dead.
		if err := s.st.Remove(ctx, q, env.ID); err != nil {
			s.removeLater(q, env.ID, "returned", err)
			return
		}
		s.log.Info("queue: returned to sender by an operator", "id", env.ID)
	case slices.ContainsFunc(env.Rcpts, func(r RcptState) bool { return r.State == RcptFailed }):
		env.LastError = rcptErrors(env, RcptFailed)
		s.moveOn(ctx, q, Dead, env, att)
	default:
		if err := s.st.Remove(ctx, q, env.ID); err != nil {
			s.removeLater(q, env.ID, "delivered", err)
			return
		}
		s.log.Info("queue: delivered", "id", env.ID)
	}
}

// rcptErrors returns the last replies of env's recipients in state, for
// Envelope.LastError.
func rcptErrors(env *Envelope, state string) string {
	var errs []string
	for _, r := range env.Rcpts {
		if r.State == state {
			errs = append(errs, r.Addr.String()+": "+r.Reply.String())
		}
	}
	return strings.Join(errs, "; ")
}

// moveOn records the outcome of attempt att on env, moving it from q to
// "to" (Deferred or Dead). When the store refuses, the outcome is kept in
// memory and its record retried, the message not delivered again
// meanwhile (see recordLater): the recipients the attempt delivered are
// still pending in the store.
func (s *Scheduler) moveOn(ctx context.Context, q, to string, env *Envelope, att *attempt) {
	if err := s.st.Save(ctx, env, q, to, nil); err != nil {
		s.recordLater(recOutcome, to, env, att.stored, err)
		return
	}
	s.movedOn(to, env, s.cfg.Clock.Now())
}

// movedOn goes on with env once its outcome is recorded in queue to.
func (s *Scheduler) movedOn(to string, env *Envelope, now time.Time) {
	switch to {
	case Deferred:
		s.log.Info("queue: deferred", "id", env.ID, "attempts", env.Attempts, "next", env.NextAttempt, "error", env.LastError)
		s.retryAt(env.ID, s.wakeAt(env, now))
	case Working, Deliver: // a delay DSN's record
		s.retryAt(env.ID, s.wakeAt(env, now))
	default:
		s.log.Info("queue: moved", "id", env.ID, "queue", to, "error", env.LastError)
	}
}

type timer struct {
	at time.Time
	id string
}

type timerHeap []timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}
