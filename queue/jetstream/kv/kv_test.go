package kv_test

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/queue/jetstream/kv"
	"github.com/mtakit/mtakit/relay"
)

// The Store satisfies the interfaces the rules declare.
var (
	_ relay.StateStore  = (*kv.Store)(nil)
	_ auth.FailureStore = (*kv.Store)(nil)
)

// runServer starts an embedded single-node JetStream server on loopback,
// syncing every write, with its data in a temporary directory.
func runServer(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		SyncAlways: true, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// node connects one client (one mtakit node) to s and opens bucket on it.
func node(t *testing.T, s *server.Server, cfg kv.Config) *kv.Store {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(0))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	st, err := kv.Open(context.Background(), js, cfg)
	require.NoError(t, err)
	return st
}

func counter(old []byte) ([]byte, error) {
	n := 0
	if old != nil {
		var err error
		if n, err = strconv.Atoi(string(old)); err != nil {
			return nil, err
		}
	}
	return []byte(strconv.Itoa(n + 1)), nil
}

// TestUpdateConcurrentNodes: two clients incrementing one counter from
// many goroutines lose no increment: the count is the number of Updates
// that returned nil, and those are all of them.
func TestUpdateConcurrentNodes(t *testing.T) {
	s := runServer(t)
	cfg := kv.Config{Bucket: "cas", TTL: time.Hour}
	a, b := node(t, s, cfg), node(t, s, cfg)
	const workers, each = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each)
	for _, st := range []*kv.Store{a, b} {
		for range workers {
			wg.Go(func() {
				for range each {
					if _, err := st.Update(context.Background(), "count", counter); err != nil {
						errs <- err
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	v, err := a.Update(context.Background(), "count", func(old []byte) ([]byte, error) { return old, nil })
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(2*workers*each), string(v))
}

// TestUpdateKeysAndReads: any string is a key, keys are distinct, a read
// that returns the old value writes nothing, and an error of fn is
// returned unchanged.
func TestUpdateKeysAndReads(t *testing.T) {
	s := runServer(t)
	st := node(t, s, kv.Config{Bucket: "keys"})
	ctx := context.Background()
	keys := []string{"", "greylist:192.0.2.0/24 <a@b.test> u@c.test", "conns:2001:db8::/64", "user:ALICE@x", "user:alice@x", "*.>", strings.Repeat("é", 200)}
	for i, k := range keys {
		_, err := st.Update(ctx, k, func(old []byte) ([]byte, error) {
			assert.Nil(t, old, "key %q starts empty", k)
			return []byte(strconv.Itoa(i)), nil
		})
		require.NoError(t, err, "key %q", k)
	}
	for i, k := range keys {
		v, err := st.Update(ctx, k, func(old []byte) ([]byte, error) { return old, nil })
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(i), string(v), "key %q", k)
	}
	// No write for a read: the stream's message count does not move.
	info := func() uint64 {
		nc, err := nats.Connect(s.ClientURL())
		require.NoError(t, err)
		defer nc.Close()
		js, _ := jetstream.New(nc)
		b, err := js.KeyValue(ctx, "keys")
		require.NoError(t, err)
		st, err := b.Status(ctx)
		require.NoError(t, err)
		return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
	}
	before := info()
	_, err := st.Update(ctx, keys[1], func(old []byte) ([]byte, error) { return old, nil })
	require.NoError(t, err)
	assert.Equal(t, before, info())
	// nil for a key with no value, written as nothing.
	v, err := st.Update(ctx, "absent", func(old []byte) ([]byte, error) { return old, nil })
	require.NoError(t, err)
	assert.Nil(t, v)
	assert.Equal(t, before, info())

	boom := fmt.Errorf("boom")
	_, err = st.Update(ctx, keys[1], func([]byte) ([]byte, error) { return nil, boom })
	assert.ErrorIs(t, err, boom)
}

// TestUpdateTTL: a value not written for the bucket's TTL is gone.
func TestUpdateTTL(t *testing.T) {
	s := runServer(t)
	st := node(t, s, kv.Config{Bucket: "ttl", TTL: 500 * time.Millisecond})
	ctx := context.Background()
	_, err := st.Update(ctx, "k", counter)
	require.NoError(t, err)
	read := func() []byte {
		v, err := st.Update(ctx, "k", func(old []byte) ([]byte, error) { return old, nil })
		require.NoError(t, err)
		return v
	}
	assert.Equal(t, "1", string(read()))
	require.Eventually(t, func() bool { return read() == nil }, 10*time.Second, 50*time.Millisecond, "expired")
	v, err := st.Update(ctx, "k", counter)
	require.NoError(t, err)
	assert.Equal(t, "1", string(v), "starts afresh")
}

// TestUpdateServerDown: with the server gone, Update fails within the
// timeout instead of blocking an SMTP command.
func TestUpdateServerDown(t *testing.T) {
	s := runServer(t)
	st := node(t, s, kv.Config{Bucket: "down", Timeout: 300 * time.Millisecond})
	s.Shutdown()
	start := time.Now()
	_, err := st.Update(context.Background(), "k", counter)
	require.Error(t, err)
	assert.Less(t, time.Since(start), 3*time.Second)
}

func TestOpenErrors(t *testing.T) {
	s := runServer(t)
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	for _, cfg := range []kv.Config{{}, {Bucket: "bad name"}, {Bucket: "x", TTL: -1}} {
		_, err := kv.Open(context.Background(), js, cfg)
		assert.Error(t, err, "%+v", cfg)
	}
}

// TestTwoNodesShareRateLimit: two nodes' rate limiters, each on its own
// connection to the bucket, give a client 4 messages an hour in all.
func TestTwoNodesShareRateLimit(t *testing.T) {
	s := runServer(t)
	cfg := kv.Config{Bucket: "mtakit_ratelimit", TTL: time.Hour}
	chains := make([]*policy.Chain, 2)
	for i := range chains {
		rl, err := relay.NewRateLimiter(relay.RateLimitOptions{
			Limits: relay.RateLimits{Messages: relay.Rate{N: 4, Per: time.Hour}},
			Store:  node(t, s, cfg),
		})
		require.NoError(t, err)
		chains[i] = policy.NewChain().Mail("rate", rl.MailRule()).Rcpt("local", accept)
	}
	var codes []int
	for i := range 6 {
		out, err := policytest.Run(context.Background(), chains[i%2], policytest.Session{Remote: "192.0.2.1:4000", From: "a@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		codes = append(codes, out.Mail.Reply.Code)
	}
	assert.Equal(t, []int{250, 250, 250, 250, 450, 450}, codes)
}

// TestTwoNodesShareGreylist: a triplet greylisted by one node passes on
// the other once the delay is over.
func TestTwoNodesShareGreylist(t *testing.T) {
	s := runServer(t)
	cfg := kv.Config{Bucket: "mtakit_greylist", TTL: 37 * 24 * time.Hour}
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	chains := make([]*policy.Chain, 2)
	for i := range chains {
		g, err := relay.NewGreylist(relay.GreylistOptions{Store: node(t, s, cfg), Now: clock})
		require.NoError(t, err)
		chains[i] = policy.NewChain().Rcpt("greylist", g.RcptRule()).Rcpt("local", accept)
	}
	rcpt := func(i int) string {
		out, err := policytest.Run(context.Background(), chains[i], policytest.Session{Remote: "192.0.2.1:4000", From: "a@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		return out.Rcpts[0].Reply.String()
	}
	assert.Contains(t, rcpt(0), "451 4.7.1 <u@local.test>: Recipient address rejected: Greylisted, try again in 300 seconds")
	mu.Lock()
	now = now.Add(5 * time.Minute)
	mu.Unlock()
	assert.True(t, strings.HasPrefix(rcpt(1), "250"), "node 1 knows node 0 saw the triplet")
}

// TestTwoNodesShareAuthFailures: a guesser's failures on either node count
// together; once refused on one it is refused on both.
func TestTwoNodesShareAuthFailures(t *testing.T) {
	s := runServer(t)
	cfg := kv.Config{Bucket: "mtakit_authfail", TTL: 15 * time.Minute}
	lims := []*auth.FailureLimiter{
		{MaxFailures: 2, RefuseAfter: 4, Delay: -1, Store: node(t, s, cfg)},
		{MaxFailures: 2, RefuseAfter: 4, Delay: -1, Store: node(t, s, cfg)},
	}
	ctx := context.Background()
	ip := netip.MustParseAddr("198.51.100.7")
	for i := range 4 {
		require.NoError(t, lims[i%2].Wait(ctx, ip))
		require.NoError(t, lims[i%2].Fail(ctx, ip))
	}
	for _, l := range lims {
		var rl *auth.RateLimitError
		require.ErrorAs(t, l.Wait(ctx, ip), &rl)
		assert.Greater(t, rl.RetryAfter, 14*time.Minute)
		n, err := l.Failures(ctx, ip)
		require.NoError(t, err)
		assert.Equal(t, 4, n)
	}
	require.NoError(t, lims[0].Wait(ctx, netip.MustParseAddr("198.51.100.8")), "another client is not affected")
}

func accept(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict {
	return policy.Accept()
}
