package jetstream

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
	"github.com/mtakit/mtakit/smtp"
)

// The store is what an mtakit.Server needs, as the spool is.
var _ mtakit.Store = (*Store)(nil)

// recorder is a transport that records deliveries; block, when set,
// holds a delivery until it is closed.
type recorder struct {
	mu    sync.Mutex
	got   []string
	ch    chan string
	start chan string
	block chan struct{}
}

func newRecorder() *recorder {
	return &recorder{ch: make(chan string, 100), start: make(chan string, 100)}
}

func (r *recorder) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	r.start <- d.Tx.ID
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
		}
		return []policy.Reply{{Code: 451, Enhanced: "4.4.2", Text: "cut short"}}
	}
	r.mu.Lock()
	r.got = append(r.got, d.Tx.ID)
	r.mu.Unlock()
	r.ch <- d.Tx.ID
	out := make([]policy.Reply, len(d.Rcpts))
	for i := range out {
		out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	}
	return out
}

// run runs a scheduler on st until the test ends (or stop is called).
func run(t testing.TB, st queue.Store, tr queue.Transport) (stop func()) {
	sch := queue.NewScheduler(st, queue.Config{
		Transports:   map[string]queue.Transport{"test": tr},
		DefaultRoute: policy.Route{Transport: "test"},
		MinBackoff:   200 * time.Millisecond,
		Jitter:       -1,
		Hostname:     "mx.example.net",
		Logger:       quiet(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sch.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func wait[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// TestRedeliveryAfterNodeDies: node A takes a message and dies during its
// delivery (its connection to the servers gone, as when the process is
// killed); node B delivers it within the ack wait, resuming A's attempt.
func TestRedeliveryAfterNodeDies(t *testing.T) {
	e := embedded(t)
	a := open(t, e.URL(), Config{AckWait: time.Second})
	b := open(t, e.URL(), Config{AckWait: time.Second})
	blocked := newRecorder()
	blocked.block = make(chan struct{})
	defer close(blocked.block)
	run(t, a, blocked)
	queuetest.Add(t, a, "m1", queue.Working, queuetest.Msg)
	assert.Equal(t, "m1", wait(t, blocked.start, 10*time.Second, "A's attempt"))
	// A's attempt record is there: the attempt started.
	_, env, m, err := b.Load("m1")
	require.NoError(t, err)
	m.Close()
	assert.True(t, env.InFlight)
	died := time.Now()
	a.nc.Close() // A dies: no ack, no in-progress ack any more
	ok := newRecorder()
	run(t, b, ok)
	assert.Equal(t, "m1", wait(t, ok.ch, 10*time.Second, "B's delivery"))
	assert.Less(t, time.Since(died), 5*time.Second, "within the ack wait (and a fetch)")
	require.Eventually(t, func() bool {
		_, _, _, err := b.Load("m1")
		return errors.Is(err, queue.ErrNotFound)
	}, 10*time.Second, 10*time.Millisecond)
}

// TestLongDeliveryKeptByInProgress: a delivery longer than the ack wait
// stays with its node (in-progress acks): the other node never gets it.
func TestLongDeliveryKeptByInProgress(t *testing.T) {
	e := embedded(t)
	a := open(t, e.URL(), Config{AckWait: time.Second})
	b := open(t, e.URL(), Config{AckWait: time.Second})
	slow := newRecorder() // both nodes' transport: every delivery hangs
	slow.block = make(chan struct{})
	run(t, a, slow)
	run(t, b, slow)
	queuetest.Add(t, a, "long", queue.Working, queuetest.Msg)
	require.Equal(t, "long", wait(t, slow.start, 10*time.Second, "the first attempt"))
	// Three ack waits: without in-progress acks the other node would get
	// it (or the same node again).
	select {
	case id := <-slow.start:
		t.Fatalf("%s handed out again during its delivery", id)
	case <-time.After(3 * time.Second):
	}
	close(slow.block)
}

// TestDeduplication: the same queue ID accepted by two nodes is stored
// once; two nodes changing one message: one wins, the other's change
// fails (compare-and-set), nothing is applied twice.
func TestDeduplication(t *testing.T) {
	e := embedded(t)
	a := open(t, e.URL(), Config{})
	b := open(t, e.URL(), Config{})
	ctx := context.Background()
	require.NoError(t, a.Enqueue(ctx, queuetest.NewTx("same", "a@example.org", "b@example.com"), newMessage(t)))
	err := b.Enqueue(ctx, queuetest.NewTx("same", "a@example.org", "b@example.com"), newMessage(t))
	require.ErrorIs(t, err, queue.ErrExists)
	ids, err := a.IDs(queue.Working)
	require.NoError(t, err)
	assert.Equal(t, []string{"same"}, ids)

	_, ea, ma, err := a.Load("same")
	require.NoError(t, err)
	defer ma.Close()
	_, eb, mb, err := b.Load("same")
	require.NoError(t, err)
	defer mb.Close()
	require.NoError(t, a.Save(ctx, ea, queue.Working, queue.Hold, nil))
	assert.ErrorIs(t, b.Save(ctx, eb, queue.Working, queue.Deliver, nil), queue.ErrNotFound, "the second change fails")
	q, _, m, err := b.Load("same")
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, queue.Hold, q)
	info, err := a.stream.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), info.State.Msgs, "one envelope in the stream")

	// A publish retried with the same message ID is stored once.
	data, err := ea.Encode()
	require.NoError(t, err)
	for range 2 {
		_, err := a.js.Publish(ctx, a.prefix+"env.retried.hold", data, jetstream.WithMsgID("retried-1"))
		require.NoError(t, err)
	}
	ids, err = a.IDs(queue.Hold)
	require.NoError(t, err)
	assert.Equal(t, []string{"retried", "same"}, ids)
	info, err = a.stream.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), info.State.Msgs)
}

func newMessage(t *testing.T) *policy.Message {
	t.Helper()
	m, err := policy.NewMessage(strings.NewReader(queuetest.Msg), int64(len(queuetest.Msg)), nil)
	require.NoError(t, err)
	return m
}

// TestEnqueueFailsWithoutServer: with the servers gone, Enqueue fails (in
// Config.Timeout) and the SMTP server answers 451 4.3.0, never 250.
func TestEnqueueFailsWithoutServer(t *testing.T) {
	e := embedded(t)
	st := open(t, e.URL(), Config{Timeout: 2 * time.Second})
	chain := policy.NewChain()
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	srv, err := smtp.NewServer(smtp.Config{Hostname: "mx.example.org", Chain: chain, Queue: st, SpoolDir: t.TempDir(), Logger: quiet()})
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(context.Background(), l, smtp.Listener{Name: "mta", Role: smtp.RoleMTA})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	send := func() error {
		c, err := gosmtp.Dial(l.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.Hello("client.example.net"))
		require.NoError(t, c.Mail("a@example.net", nil))
		require.NoError(t, c.Rcpt("b@example.org", nil))
		w, err := c.Data()
		require.NoError(t, err)
		io.WriteString(w, "Subject: hi\r\n\r\nhello\r\n")
		return w.Close()
	}
	require.NoError(t, send(), "250 while the server runs")
	require.NoError(t, e.Close())
	start := time.Now()
	err = send()
	var se *gosmtp.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 451, se.Code)
	assert.Equal(t, gosmtp.EnhancedCode{4, 3, 0}, se.EnhancedCode)
	assert.Less(t, time.Since(start), 10*time.Second)
	// And straight from the store.
	err = st.Enqueue(context.Background(), queuetest.NewTx("", "a@example.org", "b@example.com"), newMessage(t))
	assert.Error(t, err)
}
