package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// mapStore is a StateStore in a map, as a shared store behaves: values
// are copied in and out, and a value equal to the old one is not written.
type mapStore struct {
	mu     sync.Mutex
	m      map[string][]byte
	writes int
	err    error // returned by every Update when set
}

func (s *mapStore) Update(_ context.Context, key string, fn func(old []byte) ([]byte, error)) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	old := s.m[key]
	v, err := fn(bytes.Clone(old))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(v, old) {
		if s.m == nil {
			s.m = map[string][]byte{}
		}
		s.m[key] = bytes.Clone(v)
		s.writes++
	}
	return v, nil
}

// forStores runs test with the rules' own memory and with a store.
func forStores(t *testing.T, test func(*testing.T, relay.StateStore)) {
	t.Run("memory", func(t *testing.T) { test(t, nil) })
	t.Run("store", func(t *testing.T) { test(t, &mapStore{}) })
}

func TestParseRateLimits(t *testing.T) {
	tests := []struct {
		in      string
		want    relay.RateLimits
		wantErr string
	}{
		{in: "", want: relay.RateLimits{}},
		{in: "msgs=200/h,rcpts=1000/h,conns=60/m", want: relay.RateLimits{
			Connections: relay.Rate{N: 60, Per: time.Minute}, Messages: relay.Rate{N: 200, Per: time.Hour}, Recipients: relay.Rate{N: 1000, Per: time.Hour}}},
		{in: " msgs = 5/d , conns=off", want: relay.RateLimits{Messages: relay.Rate{N: 5, Per: 24 * time.Hour}}},
		{in: "rcpts=3/90s", want: relay.RateLimits{Recipients: relay.Rate{N: 3, Per: 90 * time.Second}}},
		{in: "msgs=200", wantErr: "want N/period"},
		{in: "msgs", wantErr: "want name=N/period"},
		{in: "mails=1/h", wantErr: "unknown name"},
		{in: "msgs=0/h", wantErr: "bad count"},
		{in: "msgs=-1/h", wantErr: "bad count"},
		{in: "msgs=1/fortnight", wantErr: "bad period"},
		{in: "msgs=1/-1s", wantErr: "bad period"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := relay.ParseRateLimits(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	assert.Equal(t, "60/m", relay.Rate{N: 60, Per: time.Minute}.String())
	assert.Equal(t, "3/1m30s", relay.Rate{N: 3, Per: 90 * time.Second}.String())
}

func TestNewRateLimiterErrors(t *testing.T) {
	_, err := relay.NewRateLimiter(relay.RateLimitOptions{Limits: relay.RateLimits{Messages: relay.Rate{N: 5}}})
	assert.ErrorContains(t, err, "must be positive")
	_, err = relay.NewRateLimiter(relay.RateLimitOptions{Trusted: relay.RateLimits{Messages: relay.Rate{Per: time.Hour}}})
	assert.ErrorContains(t, err, "must be positive")
}

// TestRateLimitOverSockets drives the limits through mtakit's SMTP server
// with a fake clock: no sleeps.
func TestRateLimitOverSockets(t *testing.T) {
	forStores(t, testRateLimitOverSockets)
}

func testRateLimitOverSockets(t *testing.T, store relay.StateStore) {
	clock := newFakeClock()
	rl, err := relay.NewRateLimiter(relay.RateLimitOptions{
		Store:    store,
		Limits:   relay.RateLimits{Connections: relay.Rate{N: 2, Per: time.Minute}, Messages: relay.Rate{N: 2, Per: time.Hour}, Recipients: relay.Rate{N: 3, Per: time.Hour}},
		Trusted:  relay.RateLimits{Connections: relay.Rate{N: 100, Per: time.Minute}, Recipients: relay.Rate{N: 4, Per: time.Hour}},
		Internal: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
		Now:      clock.Now,
	})
	require.NoError(t, err)
	chain := policy.NewChain().Connect("rate-conn", rl.ConnectRule()).Mail("rate-mail", rl.MailRule())
	chain.Rcpt("rate-rcpt", rl.RcptRule()).Rcpt("local", acceptLocal)
	mta, sub := abServe(t, chain)

	t.Run("connections per minute", func(t *testing.T) {
		for i, want := range []string{"220", "220", "421 4.7.1 Error: too many connections from [127.0.0.2]"} {
			c := abDial(t, mta, "127.0.0.2")
			assert.True(t, strings.HasPrefix(c.greeting, want), "connection %d: %q", i+1, c.greeting)
		}
		// Another client has its own allowance, an internal one its own limit.
		assert.True(t, strings.HasPrefix(abDial(t, mta, "127.0.0.3").greeting, "220"))
		for range 5 {
			assert.True(t, strings.HasPrefix(abDial(t, mta, "127.0.0.9").greeting, "220"))
		}
		// The allowance refills: one connection per 30 s.
		clock.Advance(30 * time.Second)
		assert.True(t, strings.HasPrefix(abDial(t, mta, "127.0.0.2").greeting, "220"))
		assert.True(t, strings.HasPrefix(abDial(t, mta, "127.0.0.2").greeting, "421"))
	})

	t.Run("messages and recipients per client address", func(t *testing.T) {
		c := abDial(t, mta, "127.0.0.4")
		require.True(t, strings.HasPrefix(c.cmd("EHLO client.example"), "250"))
		steps := []struct{ cmd, want string }{
			{"MAIL FROM:<a@other.test>", "250"},
			{"RCPT TO:<u1@local.test>", "250"},
			{"RCPT TO:<u2@local.test>", "250"},
			{"RSET", "250"},
			{"MAIL FROM:<a@other.test>", "250"},
			{"RCPT TO:<u3@local.test>", "250"},
			{"RCPT TO:<u4@local.test>", "450 4.7.1 Error: too many recipients from [127.0.0.4]"},
			{"RSET", "250"},
			{"MAIL FROM:<a@other.test>", "450 4.7.1 Error: too much mail from [127.0.0.4]"},
		}
		for _, s := range steps {
			got := c.cmd(s.cmd)
			assert.True(t, strings.HasPrefix(got, s.want), "%s: %q", s.cmd, got)
		}
		clock.Advance(30 * time.Minute) // one message and 1.5 recipients back
		for _, s := range []struct{ cmd, want string }{
			{"MAIL FROM:<a@other.test>", "250"},
			{"RCPT TO:<u5@local.test>", "250"},
			{"RCPT TO:<u6@local.test>", "450 4.7.1"},
		} {
			got := c.cmd(s.cmd)
			assert.True(t, strings.HasPrefix(got, s.want), "%s: %q", s.cmd, got)
		}
	})

	t.Run("recipients per authenticated user, whatever the address", func(t *testing.T) {
		got := []string{}
		for _, src := range []string{"127.0.0.5", "127.0.0.6"} {
			c := abDial(t, sub, src)
			c.login("alice@local.test", "pw")
			require.True(t, strings.HasPrefix(c.cmd("MAIL FROM:<alice@local.test>"), "250"))
			for i := range 3 {
				got = append(got, c.cmd(fmt.Sprintf("RCPT TO:<r%d@other.test>", i)))
			}
		}
		// The trusted limit: 4 recipients an hour for alice, counted
		// across her two addresses.
		for i, g := range got {
			want := "250"
			if i >= 4 {
				want = "450 4.7.1 Error: too many recipients from alice@local.test"
			}
			assert.True(t, strings.HasPrefix(g, want), "recipient %d: %q", i+1, g)
		}
	})
}

// TestRateLimitMemoryBounded: with room for two clients, a third makes the
// limiter forget the one seen least recently, which starts afresh.
func TestRateLimitMemoryBounded(t *testing.T) {
	clock := newFakeClock()
	rl, err := relay.NewRateLimiter(relay.RateLimitOptions{
		Limits:     relay.RateLimits{Connections: relay.Rate{N: 1, Per: time.Hour}},
		MaxClients: 2,
		Now:        clock.Now,
	})
	require.NoError(t, err)
	chain := policy.NewChain().Connect("rate", rl.ConnectRule())
	connect := func(ip string) int {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: ip + ":4000"})
		require.NoError(t, err)
		return out.Connect.Reply.Code
	}
	assert.Equal(t, 220, connect("192.0.2.1"))
	assert.Equal(t, 450, connect("192.0.2.1"))
	assert.Equal(t, 220, connect("192.0.2.2"))
	assert.Equal(t, 450, connect("192.0.2.1"), "still remembered: 192.0.2.1 was used last")
	assert.Equal(t, 220, connect("192.0.2.3"), "evicts 192.0.2.2")
	assert.Equal(t, 220, connect("192.0.2.2"), "forgotten, starts afresh (and evicts 192.0.2.1)")
	assert.Equal(t, 220, connect("192.0.2.1"))
}

// TestRateLimitSharedStore: two limiters (two nodes) on one store share
// a client's allowance; a refusal writes nothing; a failing store lets
// mail through (the limit is not enforced) rather than stop it.
func TestRateLimitSharedStore(t *testing.T) {
	clock := newFakeClock()
	store := &mapStore{}
	node := func() *policy.Chain {
		rl, err := relay.NewRateLimiter(relay.RateLimitOptions{
			Limits: relay.RateLimits{Messages: relay.Rate{N: 4, Per: time.Hour}},
			Store:  store, Now: clock.Now,
		})
		require.NoError(t, err)
		return policy.NewChain().Mail("rate", rl.MailRule()).Rcpt("local", acceptLocal)
	}
	a, b := node(), node()
	mail := func(chain *policy.Chain) int {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: "192.0.2.1:4000", From: "a@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		return out.Mail.Reply.Code
	}
	got := []int{mail(a), mail(b), mail(a), mail(b), mail(a), mail(b)}
	assert.Equal(t, []int{250, 250, 250, 250, 450, 450}, got, "4 an hour from both nodes together")
	assert.Equal(t, 4, store.writes, "refusals write nothing")
	clock.Advance(15 * time.Minute) // one message back
	assert.Equal(t, 250, mail(b))
	assert.Equal(t, 450, mail(a))

	store.err = errors.New("no quorum")
	assert.Equal(t, 250, mail(a), "a failing store does not stop mail")
}

// TestRateLimitIPv6Per64: addresses of one /64 share an allowance.
func TestRateLimitIPv6Per64(t *testing.T) {
	rl, err := relay.NewRateLimiter(relay.RateLimitOptions{
		Limits: relay.RateLimits{Messages: relay.Rate{N: 1, Per: time.Hour}},
		Now:    newFakeClock().Now,
	})
	require.NoError(t, err)
	chain := policy.NewChain().Mail("rate", rl.MailRule()).Rcpt("local", acceptLocal)
	for _, tt := range []struct{ remote, want string }{
		{"[2001:db8:1:2::1]:4000", "250"},
		{"[2001:db8:1:2::ffff]:4000", "450 4.7.1 Error: too much mail from [2001:db8:1:2::ffff]"},
		{"[2001:db8:1:3::1]:4000", "250"},
	} {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: tt.remote, From: "a@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(out.Mail.Reply.String(), tt.want), "%s: %s", tt.remote, out.Mail.Reply)
	}
}
