package queue

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func TestEnqueueValidation(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	ctx := context.Background()
	tests := []struct {
		name string
		tx   *policy.Transaction
		want error
	}{
		{"slash", newTx("a/b", "a@example.org", "b@example.com"), ErrBadID},
		{"dotdot", newTx("..", "a@example.org", "b@example.com"), ErrBadID},
		{"tilde", newTx("a~1", "a@example.org", "b@example.com"), ErrBadID},
		{"no rcpts", newTx("x1", "a@example.org"), ErrNoRcpts},
		{"bad quarantine", func() *policy.Transaction {
			tx := newTx("x2", "a@example.org", "b@example.com")
			tx.SetQuarantine("../etc")
			return tx
		}(), ErrBadQueue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.ErrorIs(t, sp.Enqueue(ctx, tt.tx, newMessage(t, testMsg)), tt.want)
		})
	}
	require.NoError(t, sp.Enqueue(ctx, newTx("dup", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	assert.ErrorIs(t, sp.Enqueue(ctx, newTx("dup", "a@example.org", "b@example.com"), newMessage(t, testMsg)), ErrExists)
	tx := newTx("", "a@example.org", "b@example.com")
	require.NoError(t, sp.Enqueue(ctx, tx, newMessage(t, testMsg)))
	assert.True(t, validID(tx.ID), "an ID is assigned: %q", tx.ID)
	assert.True(t, sp.SupportsDSN())
}

func TestEnvelopeRoundTrip(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	conn := &policy.Conn{ID: "c9", Listener: "submission", Helo: "pc.example.org", ESMTP: true,
		AuthUser: "alice", AuthMechanism: "PLAIN", ReverseName: "pc.example.org"}
	conn.Remote = mustAddrPort("192.0.2.7:5555")
	conn.Local = mustAddrPort("[2001:db8::1]:587")
	conn.TLS = tlsState()
	tx := policy.NewTransaction(conn, "rt1")
	tx.From = policy.MustParseAddress(`"john doe"@example.org`)
	tx.Params = policy.MailParams{Size: 123, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "e1", Auth: "<>"}
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("b@example.com"), Notify: []string{"SUCCESS", "FAILURE"}, ORCPT: "rfc822;B@example.com"}}
	tx.SetForceAccepted(true)
	require.NoError(t, sp.Enqueue(context.Background(), tx, newMessage(t, testMsg)))

	it, err := sp.Show("rt1")
	require.NoError(t, err)
	assert.Equal(t, Working, it.Queue)
	assert.Equal(t, "hello", it.Header.Get("Subject"))
	got := it.Envelope.Transaction()
	assert.Equal(t, tx.From, got.From)
	assert.Equal(t, tx.Params, got.Params)
	assert.Equal(t, tx.Rcpts, got.Rcpts)
	assert.Equal(t, tx.Received.UTC(), got.Received.UTC())
	assert.True(t, got.ForceAccepted())
	assert.Equal(t, "", got.Quarantine())
	c := got.Conn
	assert.Equal(t, conn.Remote, c.Remote)
	assert.Equal(t, conn.Local, c.Local)
	assert.Equal(t, "alice", c.AuthUser)
	assert.Equal(t, "PLAIN", c.AuthMechanism)
	assert.Equal(t, "pc.example.org", c.Helo)
	assert.Equal(t, "submission", c.Listener)
	require.NotNil(t, c.TLS)
	assert.Equal(t, conn.TLS.Version, c.TLS.Version)
	assert.Equal(t, conn.TLS.CipherSuite, c.TLS.CipherSuite)
	assert.Equal(t, int64(len(testMsg)), it.Envelope.Size)
}

func TestAdmin(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.tr.script = func(rcpt string, n int) policy.Reply { return reply(451, "4.0.0", "later") }
	ctx := context.Background()
	h.enqueue(newTx("a1", "a@example.org", "b@example.com"), testMsg)
	h.enqueue(newTx("a2", "a@example.org", "b@example.com"), testMsg)
	h.enqueue(newTx("a3", "a@example.org", "b@example.com"), testMsg)
	l, err := h.sp.List(Working)
	require.NoError(t, err)
	assert.Equal(t, []string{"a1", "a2", "a3"}, ids(l))

	_, err = h.sp.List("nope")
	assert.ErrorIs(t, err, ErrBadQueue)
	_, err = h.sp.Show("zzz")
	assert.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, h.sp.Delete(ctx, "a3"))
	assert.Equal(t, "", h.queueOf("a3"))
	_, err = os.Stat(filepath.Join(h.sp.root, Working, "a3.q"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.ErrorIs(t, h.sp.Delete(ctx, "a3"), ErrNotFound)

	require.NoError(t, h.sp.Move(ctx, "a2", "quarantine/held"))
	assert.ErrorIs(t, h.sp.Move(ctx, "a2", Corrupt), ErrBadQueue)
	assert.ErrorIs(t, h.sp.Move(ctx, "a2", "quarantine/../x"), ErrBadQueue)
	assert.ErrorIs(t, h.sp.Requeue(ctx, "a2"), ErrBadQueue, "quarantine is released with Move")

	h.start()
	h.wait("a1")
	require.Equal(t, Deferred, h.queueOf("a1"))
	assert.Equal(t, "quarantine/held", h.queueOf("a2"), "quarantine is never delivered")
	// Requeue delivers now, without waiting for the backoff.
	h.tr.mu.Lock()
	h.tr.script = nil
	h.tr.mu.Unlock()
	require.NoError(t, h.sp.Requeue(ctx, "a1"))
	h.wait("a1")
	assert.Equal(t, "", h.queueOf("a1"))
	assert.Len(t, h.tr.deliveries(), 2)
}

func TestAdminWhileRunning(t *testing.T) {
	// Admin calls racing with the workers (run with -race): every message
	// ends either delivered or deleted, none twice in the spool.
	h := newHarness(t, "", Config{Workers: 4})
	h.start()
	ctx := context.Background()
	const n = 40
	for i := range n {
		id := "r" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		h.enqueue(newTx(id, "a@example.org", "b@example.com"), testMsg)
		switch i % 3 {
		case 0:
			err := h.sp.Delete(ctx, id)
			if err != nil {
				assert.ErrorIs(t, err, ErrNotFound)
			}
		case 1:
			_, _ = h.sp.Show(id)
			_, _ = h.sp.List(Working)
		}
	}
	h.stop()
	for _, q := range []string{Working, Deliver, Deferred, Dead, Corrupt} {
		l, err := h.sp.List(q)
		require.NoError(t, err)
		for _, e := range l {
			h.clock.Advance(time.Hour) // past any recorded next attempt
			h.start()
			h.wait(e.ID)
			h.stop()
		}
	}
	seen := map[string]int{}
	for _, d := range h.tr.deliveries() {
		seen[d.ID]++
	}
	for i := range n {
		id := "r" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if i%3 != 0 {
			assert.Equal(t, 1, seen[id], "%s delivered once", id)
		}
	}
	for _, q := range []string{Working, Deliver, Deferred, Dead, Corrupt} {
		l, _ := h.sp.List(q)
		assert.Empty(t, l, q)
	}
}

func TestSpoolLocked(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	_, err = Open(dir, SpoolConfig{Logger: quietLogger()})
	assert.ErrorIs(t, err, ErrLocked, "one spool, one owner")
	require.NoError(t, sp.Close())
	sp2, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err, "free again after Close")
	require.NoError(t, sp2.Close())
}
