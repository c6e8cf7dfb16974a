package queue

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func TestHoldAndRelease(t *testing.T) {
	h := newHarness(t, "", Config{})
	ctx := context.Background()
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if rcpt == "later@example.com" && n == 0 {
			return reply(451, "4.0.0", "later")
		}
		return reply(250, "2.0.0", "ok")
	}
	// Held before the scheduler saw it: its postq rules have not run.
	h.enqueue(newTx("h1", "a@example.org", "b@example.com"), testMsg)
	require.NoError(t, h.sp.Hold(ctx, "h1"))
	assert.Equal(t, Hold, h.queueOf("h1"))
	qs, err := h.sp.Queues()
	require.NoError(t, err)
	assert.Contains(t, qs, Hold)

	h.enqueue(newTx("h2", "a@example.org", "later@example.com"), testMsg)
	h.start()
	h.wait("h2")
	require.Equal(t, Deferred, h.queueOf("h2"))
	require.NoError(t, h.sp.Hold(ctx, "h2"), "a deferred message can be held")
	assert.Equal(t, Hold, h.queueOf("h2"))
	h.setClock(h.clock.Now().Add(24 * time.Hour)) // its retry time passes: still held
	h.wait("h2")                                  // the scheduler looked at it, and left it
	assert.Equal(t, Hold, h.queueOf("h2"))
	assert.Empty(t, h.tr.deliveries()[1:], "only the first attempt of h2; h1 never")

	tests := []struct {
		name, id string
		op       func(context.Context, string) error
		want     error
	}{
		{"hold twice", "h1", h.sp.Hold, ErrBadQueue},
		{"release a message that is gone", "none", h.sp.Release, ErrNotFound},
		{"bad ID", "../x", h.sp.Hold, ErrBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.ErrorIs(t, tt.op(ctx, tt.id), tt.want)
		})
	}

	// Released, each goes on: h1 through postq (it never ran), h2 at once
	// without waiting for its backoff.
	require.NoError(t, h.sp.Release(ctx, "h1"))
	h.wait("h1")
	require.NoError(t, h.sp.Release(ctx, "h2"))
	h.wait("h2")
	assert.Equal(t, "", h.queueOf("h1"))
	assert.Equal(t, "", h.queueOf("h2"))
	assert.Equal(t, []string{"later@example.com", "b@example.com", "later@example.com"}, rcptsOf(h.tr.deliveries()))
	assert.ErrorIs(t, h.sp.Release(ctx, "h1"), ErrNotFound)
}

func TestHoldRefusesQueues(t *testing.T) {
	h := newHarness(t, "", Config{})
	ctx := context.Background()
	tx := newTx("q1", "a@example.org", "b@example.com")
	tx.SetQuarantine("spam")
	h.enqueue(tx, testMsg)
	assert.ErrorIs(t, h.sp.Hold(ctx, "q1"), ErrBadQueue, "a quarantined message is kept already")
	h.enqueue(newTx("w1", "a@example.org", "b@example.com"), testMsg)
	assert.ErrorIs(t, h.sp.Release(ctx, "w1"), ErrBadQueue, "only hold and quarantine are released")
}

// A message quarantined by a postq rule and released is delivered without
// running the postq rules again.
func TestReleaseFromQuarantineSkipsPostQ(t *testing.T) {
	var runs atomic.Int32
	chain := policy.NewChain()
	chain.PostQ("judge", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		runs.Add(1)
		m.Header.Add("X-Judged", "yes")
		return policy.Quarantine("judged")
	})
	h := newHarness(t, "", Config{Chain: chain})
	h.start()
	h.enqueue(newTx("j1", "a@example.org", "b@example.com"), testMsg)
	h.wait("j1")
	require.Equal(t, "quarantine/judged", h.queueOf("j1"))
	require.NoError(t, h.sp.Release(context.Background(), "j1"))
	h.wait("j1")
	assert.Equal(t, "", h.queueOf("j1"), "delivered")
	assert.Equal(t, int32(1), runs.Load(), "the postq rules ran once")
	ds := h.tr.deliveries()
	require.Len(t, ds, 1)
	assert.Equal(t, 1, strings.Count(string(ds[0].Data), "X-Judged: yes"), "the rules' edits are kept, not made twice")
}

func TestBounce(t *testing.T) {
	h := newHarness(t, "", Config{})
	ctx := context.Background()
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if rcpt == "slow@example.com" {
			return reply(451, "4.0.0", "later")
		}
		return reply(250, "2.0.0", "ok")
	}
	// b1: one recipient delivered, one deferred; the bounce returns only
	// the deferred one.
	h.enqueue(newTx("b1", "sender@example.org", "fast@example.com", "slow@example.com"), testMsg)
	h.start()
	h.wait("b1")
	require.Equal(t, Deferred, h.queueOf("b1"))
	require.NoError(t, h.sp.Bounce(ctx, "b1"))
	h.wait("b1")
	assert.Equal(t, "", h.queueOf("b1"), "deleted, not kept in dead")
	h.waitOther("b1") // the DSN, delivered
	got := dsns(h.tr.deliveries())
	require.Len(t, got, 1)
	assert.Equal(t, "sender@example.org", got[0].Rcpt)
	body := string(got[0].Data)
	assert.Contains(t, body, "Final-Recipient: rfc822; slow@example.com")
	assert.NotContains(t, body, "Final-Recipient: rfc822; fast@example.com")
	assert.Contains(t, body, "Status: 5.0.0")
	assert.Contains(t, body, "returned to sender by the mail system administrator")

	// A null-sender message held, then bounced: deleted, no DSN.
	h.enqueue(newTx("b2", "", "slow@example.com"), testMsg)
	h.wait("b2")
	require.NoError(t, h.sp.Hold(ctx, "b2"))
	require.NoError(t, h.sp.Bounce(ctx, "b2"))
	h.wait("b2")
	assert.Equal(t, "", h.queueOf("b2"))
	assert.Len(t, dsns(h.tr.deliveries()), 1, "nothing is sent to the null sender")
	dead, err := h.sp.List(Dead)
	require.NoError(t, err)
	assert.Empty(t, dead)

	assert.ErrorIs(t, h.sp.Bounce(ctx, "b2"), ErrNotFound)
}

func TestBounceOffline(t *testing.T) {
	// No scheduler runs: the bounce is recorded, and the DSN goes out
	// when one starts.
	dir := t.TempDir()
	h := newHarness(t, dir, Config{})
	ctx := context.Background()
	h.enqueue(newTx("o1", "sender@example.org", "b@example.com"), testMsg)
	require.NoError(t, h.sp.Bounce(ctx, "o1"))
	assert.Equal(t, Deliver, h.queueOf("o1"))
	env := h.envelope("o1")
	assert.True(t, env.Returned)
	assert.Equal(t, RcptFailed, env.Rcpts[0].State)
	assert.ErrorIs(t, h.sp.Bounce(ctx, "o1"), ErrBadQueue, "no recipient left to bounce")
	h.start()
	h.wait("o1")
	assert.Equal(t, "", h.queueOf("o1"))
	h.waitOther("o1")
	require.Len(t, dsns(h.tr.deliveries()), 1)
}

func TestReadMessage(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	rc, err := h.sp.ReadMessage("m1")
	require.NoError(t, err)
	b, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	assert.Equal(t, testMsg, string(b))
	_, err = h.sp.ReadMessage("nope")
	assert.ErrorIs(t, err, ErrNotFound)
}
