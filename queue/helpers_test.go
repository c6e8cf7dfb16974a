package queue

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// fakeClock is a Clock moved by hand.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Set moves the clock to t and fires the timers due.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(t) {
			w.ch <- t
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// delivered is one recipient's delivery as the fake transport saw it.
type delivered struct {
	ID    string
	From  string
	Rcpt  string
	Route policy.Route
	Data  []byte
}

// fakeTransport records deliveries and answers with script (250 when nil).
type fakeTransport struct {
	mu     sync.Mutex
	got    []delivered
	calls  int
	script func(rcpt string, n int) policy.Reply // n: how many times rcpt was tried before
	tries  map[string]int
}

func (f *fakeTransport) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	var buf bytes.Buffer
	if _, err := d.Message.WriteTo(&buf); err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.tries == nil {
		f.tries = map[string]int{}
	}
	out := make([]policy.Reply, len(d.Rcpts))
	for i, r := range d.Rcpts {
		a := r.Addr.String()
		rep := policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
		if f.script != nil {
			rep = f.script(a, f.tries[a])
		}
		f.tries[a]++
		out[i] = rep
		f.got = append(f.got, delivered{ID: d.Tx.ID, From: d.Tx.From.String(), Rcpt: a, Route: d.Route, Data: slices.Clone(buf.Bytes())})
	}
	return out
}

func (f *fakeTransport) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeTransport) deliveries() []delivered {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// rcptsOf returns the recipients of the deliveries for rcpt-less checks.
func rcptsOf(ds []delivered) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Rcpt)
	}
	return out
}

const testMsg = "From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nHello world.\r\nFrom the body.\r\n"

func newMessage(t testing.TB, raw string) *policy.Message {
	t.Helper()
	m, err := policy.NewMessage(bytes.NewReader([]byte(raw)), int64(len(raw)), nil)
	require.NoError(t, err)
	return m
}

func newTx(id, from string, rcpts ...string) *policy.Transaction {
	tx := policy.NewTransaction(&policy.Conn{ID: "c1", Helo: "client.example.org", ESMTP: true}, id)
	tx.Received = time.Time{} // the spool's (fake) clock fills it
	tx.From = policy.MustParseAddress(from)
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return tx
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// harness is a spool and a scheduler running on a fake clock.
type harness struct {
	t      *testing.T
	sp     *Spool
	sch    *Scheduler
	clock  *fakeClock
	tr     *fakeTransport
	done   chan string
	events []string // finished, not yet waited for
	stop   func()
}

func newHarness(t *testing.T, dir string, cfg Config) *harness {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	h := &harness{t: t, clock: newFakeClock(), tr: &fakeTransport{}, done: make(chan string, 1000)}
	if cfg.Clock == nil {
		cfg.Clock = h.clock
	}
	var err error
	h.sp, err = Open(dir, SpoolConfig{Logger: quietLogger(), Clock: cfg.Clock})
	require.NoError(t, err)
	if cfg.Transports == nil {
		cfg.Transports = map[string]Transport{"fake": h.tr}
	}
	if cfg.DefaultRoute == (policy.Route{}) {
		cfg.DefaultRoute = policy.Route{Transport: "fake"}
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = -1
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "mx.test"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	h.sch = NewScheduler(h.sp, cfg)
	h.sch.afterWork = func(id string) { h.done <- id }
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.sch.Run(ctx) }()
	h.stop = func() {
		cancel()
		<-errc
		h.stop = nil
	}
	h.t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
		}
		h.sp.Close()
	})
}

// wait waits until a worker finished with id (bounded: 10s), consuming
// that one event.
func (h *harness) wait(id string) {
	h.t.Helper()
	h.take(func(evs []string) int {
		for i, e := range evs {
			if e == id {
				return i
			}
		}
		return -1
	}, "waiting for "+id)
}

// waitOther waits until a worker finished with an ID not in not (the
// DSN of a message, say) and returns it.
func (h *harness) waitOther(not ...string) string {
	h.t.Helper()
	return h.take(func(evs []string) int {
		for i, e := range evs {
			if !slices.Contains(not, e) {
				return i
			}
		}
		return -1
	}, "waiting for another message")
}

// waitN waits until workers finished n times (any IDs) and returns them.
func (h *harness) waitN(n int) []string {
	h.t.Helper()
	var ids []string
	for range n {
		ids = append(ids, h.take(func(evs []string) int {
			if len(evs) > 0 {
				return 0
			}
			return -1
		}, "waiting for events"))
	}
	return ids
}

// take removes and returns the event pick chooses among those seen and not
// yet taken, waiting for more up to 10s.
func (h *harness) take(pick func([]string) int, what string) string {
	h.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		for {
			select {
			case id := <-h.done:
				h.events = append(h.events, id)
				continue
			default:
			}
			break
		}
		if i := pick(h.events); i >= 0 {
			id := h.events[i]
			h.events = append(h.events[:i], h.events[i+1:]...)
			return id
		}
		select {
		case id := <-h.done:
			h.events = append(h.events, id)
		case <-timeout:
			h.t.Fatalf("timed out %s", what)
		}
	}
}

// setClock moves the fake clock to t and wakes the scheduler's loop. The
// loop computes a timer's duration from the time it read, so a Set that
// comes between that read and its Clock.After would push the timer late by
// the move; the wake-up makes it look at the timers again at the new time.
func (h *harness) setClock(t time.Time) {
	h.clock.Set(t)
	h.sch.poke()
}

func (h *harness) enqueue(tx *policy.Transaction, raw string) {
	h.t.Helper()
	require.NoError(h.t, h.sp.Enqueue(context.Background(), tx, newMessage(h.t, raw)))
}

// queueOf returns the queue holding id, or "" when it is gone.
func (h *harness) queueOf(id string) string {
	q, err := h.sp.locate(id)
	if err != nil {
		return ""
	}
	return q
}

func (h *harness) envelope(id string) *Envelope {
	h.t.Helper()
	it, err := h.sp.Show(id)
	require.NoError(h.t, err)
	return it.Envelope
}

// dsns returns the deliveries of our DSNs.
func dsns(ds []delivered) []delivered {
	var out []delivered
	for _, d := range ds {
		if d.From == "" && bytes.Contains(d.Data, []byte("multipart/report")) {
			out = append(out, d)
		}
	}
	return out
}

func ids(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

var _ = fmt.Sprintf

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func tlsState() *tls.ConnectionState {
	return &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, HandshakeComplete: true}
}

// readEnvelope reads the envelope of id in queue q.
func (s *Spool) readEnvelope(q, id string) (*Envelope, error) {
	f, env, err := s.openEntry(q, id, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	s.closeEntry(f, id)
	return env, nil
}

// removalPending reports whether id is delivered and its removal pending.
func (s *Scheduler) removalPending(id string) bool {
	p := s.pendingOf(id)
	return p != nil && p.env == nil
}

// outcomePending reports whether the outcome of id's last attempt is kept
// in memory, not recorded yet.
func (s *Scheduler) outcomePending(id string) bool {
	p := s.pendingOf(id)
	return p != nil && p.env != nil
}
