package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

// TestGreylistOverSockets plays a sender's retries through mtakit's SMTP
// server with a fake clock.
func TestGreylistOverSockets(t *testing.T) {
	forStores(t, testGreylistOverSockets)
}

func testGreylistOverSockets(t *testing.T, store relay.StateStore) {
	clock := newFakeClock()
	dir := t.TempDir()
	if store != nil {
		dir = ""
	}
	g, err := relay.NewGreylist(relay.GreylistOptions{
		Dir:      dir,
		Store:    store,
		Internal: []netip.Prefix{netip.MustParsePrefix("127.0.1.0/24")},
		Skip: func(_ context.Context, tx *policy.Transaction) bool {
			return tx.From.Domain == "spf-pass.test"
		},
		Now: clock.Now,
	})
	require.NoError(t, err)
	t.Cleanup(func() { g.Close() })
	chain := policy.NewChain().Rcpt("greylist", g.RcptRule()).Rcpt("local", acceptLocal)
	mta, sub := abServe(t, chain)

	rcpt := func(src, from, to string) string {
		c := abDial(t, mta, src)
		require.True(t, strings.HasPrefix(c.cmd("EHLO client.example"), "250"))
		require.True(t, strings.HasPrefix(c.cmd("MAIL FROM:"+from), "250"))
		return c.cmd("RCPT TO:" + to)
	}
	const greylisted = "451 4.7.1 <u@local.test>: Recipient address rejected: Greylisted, try again in "
	steps := []struct {
		name      string
		advance   time.Duration
		src, from string
		want      string
	}{
		{name: "first try", src: "127.0.0.2", from: "<a@other.test>", want: greylisted + "300 seconds"},
		{name: "too early a retry", advance: 2 * time.Minute, src: "127.0.0.2", from: "<a@other.test>", want: greylisted + "180 seconds"},
		{name: "another sender is another triplet", src: "127.0.0.2", from: "<b@other.test>", want: greylisted + "300 seconds"},
		{name: "the null sender too", src: "127.0.0.2", from: "<>", want: greylisted + "300 seconds"},
		{name: "retry after the delay passes", advance: 3 * time.Minute, src: "127.0.0.2", from: "<A@Other.test>", want: "250"},
		{name: "from another address of the /24", src: "127.0.0.77", from: "<a@other.test>", want: "250"},
		{name: "passed triplet allowed for weeks", advance: 30 * 24 * time.Hour, src: "127.0.0.2", from: "<a@other.test>", want: "250"},
		{name: "and renewed at each sighting", advance: 30 * 24 * time.Hour, src: "127.0.0.2", from: "<a@other.test>", want: "250"},
		{name: "retry window passed: starts over", src: "127.0.0.2", from: "<b@other.test>", want: greylisted + "300 seconds"},
		{name: "internal network skips", src: "127.0.1.5", from: "<c@other.test>", want: "250"},
		{name: "Skip predicate skips", src: "127.0.0.2", from: "<x@spf-pass.test>", want: "250"},
		{name: "forgotten after AllowFor without mail", advance: 37 * 24 * time.Hour, src: "127.0.0.2", from: "<a@other.test>", want: greylisted + "300 seconds"},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		got := rcpt(s.src, s.from, "<u@local.test>")
		assert.True(t, strings.HasPrefix(got, s.want), "%s: %q", s.name, got)
	}

	// An authenticated client is never greylisted.
	c := abDial(t, sub, "127.0.0.2")
	c.login("alice@local.test", "pw")
	require.True(t, strings.HasPrefix(c.cmd("MAIL FROM:<alice@local.test>"), "250"))
	assert.True(t, strings.HasPrefix(c.cmd("RCPT TO:<new@other.test>"), "250"))
}

func TestGreylistPersists(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	opts := relay.GreylistOptions{Dir: dir, Now: clock.Now, MaxEntries: 3}
	g, err := relay.NewGreylist(opts)
	require.NoError(t, err)
	chain := policy.NewChain().Rcpt("greylist", g.RcptRule()).Rcpt("local", acceptLocal)
	try := func(chain *policy.Chain, rcpts ...string) []int {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: "192.0.2.1:4000", From: "a@other.test", Rcpts: rcpts})
		require.NoError(t, err)
		var codes []int
		for _, r := range out.Rcpts {
			codes = append(codes, r.Reply.Code)
		}
		return codes
	}
	assert.Equal(t, []int{451, 451, 451, 451}, try(chain, "u0@local.test", "u1@local.test", "u2@local.test", "u3@local.test"))
	require.NoError(t, g.Close())

	b, err := os.ReadFile(filepath.Join(dir, "greylist.json"))
	require.NoError(t, err)
	var f struct{ Entries []json.RawMessage }
	require.NoError(t, json.Unmarshal(b, &f))
	assert.Len(t, f.Entries, 3, "bounded by MaxEntries: u0 was forgotten")
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	assert.Empty(t, left, "no temporary file left")

	// A restarted server remembers the triplets.
	clock.Advance(6 * time.Minute)
	g2, err := relay.NewGreylist(opts)
	require.NoError(t, err)
	chain2 := policy.NewChain().Rcpt("greylist", g2.RcptRule()).Rcpt("local", acceptLocal)
	assert.Equal(t, []int{250, 250, 250, 451}, try(chain2, "u1@local.test", "u2@local.test", "u3@local.test", "u0@local.test"))

	// Saved in the background once a minute of changes has passed.
	clock.Advance(2 * time.Minute)
	assert.Equal(t, []int{451}, try(chain2, "new@local.test"))
	require.NoError(t, g2.Close())
	g3, err := relay.NewGreylist(opts)
	require.NoError(t, err)
	clock.Advance(6 * time.Minute)
	chain3 := policy.NewChain().Rcpt("greylist", g3.RcptRule()).Rcpt("local", acceptLocal)
	assert.Equal(t, []int{250}, try(chain3, "new@local.test"))

	// Entries past their time are dropped at load.
	require.NoError(t, g3.Close())
	clock.Advance(25 * time.Hour)
	g4, err := relay.NewGreylist(opts)
	require.NoError(t, err)
	chain4 := policy.NewChain().Rcpt("greylist", g4.RcptRule()).Rcpt("local", acceptLocal)
	assert.Equal(t, []int{451, 250}, try(chain4, "u0@local.test", "new@local.test"), "u0's pending entry expired; new passed")
}

func TestGreylistBadState(t *testing.T) {
	for _, content := range []string{"{not json", `{"version":2,"entries":[]}`} {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "greylist.json"), []byte(content), 0o600))
		_, err := relay.NewGreylist(relay.GreylistOptions{Dir: dir})
		require.Error(t, err, content)
		assert.Contains(t, err.Error(), filepath.Join(dir, "greylist.json"))
	}
	// No directory: in memory, nothing written.
	g, err := relay.NewGreylist(relay.GreylistOptions{})
	require.NoError(t, err)
	require.NoError(t, g.Close())
}

// TestGreylistSharedStore: a triplet greylisted by one node passes on
// another after the delay; a failing store defers with 451 4.3.0; Dir and
// Store together are refused.
func TestGreylistSharedStore(t *testing.T) {
	clock := newFakeClock()
	store := &mapStore{}
	node := func() *policy.Chain {
		g, err := relay.NewGreylist(relay.GreylistOptions{Store: store, Now: clock.Now})
		require.NoError(t, err)
		return policy.NewChain().Rcpt("greylist", g.RcptRule()).Rcpt("local", acceptLocal)
	}
	a, b := node(), node()
	rcpt := func(chain *policy.Chain) string {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: "192.0.2.1:4000", From: "a@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		return out.Rcpts[0].Reply.String()
	}
	assert.Contains(t, rcpt(a), "451 4.7.1 <u@local.test>: Recipient address rejected: Greylisted, try again in 300 seconds")
	clock.Advance(time.Minute)
	assert.Contains(t, rcpt(b), "try again in 240 seconds", "node b knows when node a first saw it")
	clock.Advance(4 * time.Minute)
	assert.True(t, strings.HasPrefix(rcpt(b), "250"))
	assert.True(t, strings.HasPrefix(rcpt(a), "250"))
	writes := store.writes
	clock.Advance(time.Minute)
	assert.True(t, strings.HasPrefix(rcpt(a), "250"))
	assert.Equal(t, writes, store.writes, "a passed triplet seen again soon writes nothing")

	store.err = errors.New("no quorum")
	assert.Equal(t, "451 4.3.0 Greylisting state unavailable, try again later", rcpt(a))

	_, err := relay.NewGreylist(relay.GreylistOptions{Store: store, Dir: t.TempDir()})
	require.Error(t, err)
}

func TestGreylistAtPreQ(t *testing.T) {
	clock := newFakeClock()
	g, err := relay.NewGreylist(relay.GreylistOptions{Now: clock.Now})
	require.NoError(t, err)
	chain := policy.NewChain().Rcpt("local", acceptLocal).PreQ("greylist", g.MessageRule())
	s := policytest.Session{Remote: "[2001:db8::1]:4000", From: "a@other.test", Rcpts: []string{"u1@local.test", "u2@local.test"}}
	out, err := policytest.Run(context.Background(), chain, s)
	require.NoError(t, err)
	assert.Equal(t, "451 4.7.1 <u1@local.test>: Recipient address rejected: Greylisted, try again in 300 seconds", out.PreQ.Reply.String())
	clock.Advance(5 * time.Minute)
	s.Remote = "[2001:db8::ffff]:4000" // the same /64
	out, err = policytest.Run(context.Background(), chain, s)
	require.NoError(t, err)
	assert.True(t, out.PreQ.Accepted(), fmt.Sprint(out.PreQ.Reply))
}
