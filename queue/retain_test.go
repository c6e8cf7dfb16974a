package queue

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestRetention: messages in dead and in the quarantines are deleted 30
// days (the default) after they came there, each deletion logged; the
// other queues are never purged.
func TestRetention(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, "", Config{Lifetime: 100 * 24 * time.Hour, MaxBackoff: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	purged := make(chan struct{}, 100)
	h.sch.afterPurge = func() { purged <- struct{}{} }
	waitPurge := func() {
		t.Helper()
		select {
		case <-purged:
		case <-time.After(10 * time.Second):
			t.Fatal("no retention run")
		}
	}
	h.tr.script = func(rcpt string, n int) policy.Reply {
		switch rcpt {
		case "dead@example.com":
			return reply(550, "5.1.1", "no such user")
		case "later@example.com":
			return reply(451, "4.4.1", "later")
		}
		return reply(250, "2.0.0", "OK")
	}
	t0 := h.clock.Now()
	h.start()
	waitPurge() // the run at start

	// At t0: one message dead, one quarantined at arrival, one deferred
	// (moved to a quarantine by hand at 20 days).
	h.enqueue(newTx("dead1", "<>", "dead@example.com"), testMsg)
	h.wait("dead1")
	quarantined := newTx("q1", "a@example.org", "b@example.com")
	quarantined.SetQuarantine("spam")
	h.enqueue(quarantined, testMsg)
	h.enqueue(newTx("review", "<>", "later@example.com"), testMsg)
	h.wait("review")
	require.Equal(t, Dead, h.queueOf("dead1"))
	require.Equal(t, QuarantinePrefix+"spam", h.queueOf("q1"))
	require.Equal(t, Deferred, h.queueOf("review"))

	// At 10 days another message dies.
	h.setClock(t0.Add(10 * 24 * time.Hour))
	waitPurge()
	h.wait("review") // its retry
	h.enqueue(newTx("dead2", "<>", "dead@example.com"), testMsg)
	h.wait("dead2")
	assert.Equal(t, t0.Add(10*24*time.Hour), h.envelope("dead2").Moved, "the move to dead is dated")

	h.setClock(t0.Add(20 * 24 * time.Hour))
	waitPurge()
	h.wait("review")
	require.NoError(t, h.sp.Move(context.Background(), "review", QuarantinePrefix+"review"))

	// 30 days: the first two go, with a log entry each.
	h.setClock(t0.Add(30 * 24 * time.Hour))
	waitPurge()
	assert.Empty(t, h.queueOf("dead1"))
	assert.Empty(t, h.queueOf("q1"))
	assert.Equal(t, Dead, h.queueOf("dead2"))
	assert.Equal(t, QuarantinePrefix+"review", h.queueOf("review"), "30 days after arrival, 10 after its move")
	assert.Contains(t, logs.String(), `msg="queue: purged: retention ran out" id=dead1 queue=dead age=720h0m0s`)
	assert.Contains(t, logs.String(), `msg="queue: purged: retention ran out" id=q1 queue=quarantine/spam age=720h0m0s`)

	h.setClock(t0.Add(40 * 24 * time.Hour))
	waitPurge()
	assert.Empty(t, h.queueOf("dead2"))
	assert.Equal(t, QuarantinePrefix+"review", h.queueOf("review"))
	h.setClock(t0.Add(50 * 24 * time.Hour))
	waitPurge()
	assert.Empty(t, h.queueOf("review"))
	assert.Contains(t, logs.String(), `id=review queue=quarantine/review age=720h0m0s`)
}

// TestRetentionConfigured: a retention of its own; negative keeps
// everything.
func TestRetentionConfigured(t *testing.T) {
	tests := []struct {
		name      string
		retention time.Duration
		after     time.Duration
		kept      bool
	}{
		{"one day, not yet", 24 * time.Hour, 23 * time.Hour, true},
		{"one day", 24 * time.Hour, 24 * time.Hour, false},
		{"forever", -1, 10 * 365 * 24 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "", Config{Retention: tt.retention})
			t0 := h.clock.Now()
			tx := newTx("q1", "a@example.org", "b@example.com")
			tx.SetQuarantine("spam")
			h.enqueue(tx, testMsg)
			h.clock.Set(t0.Add(tt.after))
			h.sch.purge(context.Background())
			assert.Equal(t, tt.kept, h.queueOf("q1") != "")
		})
	}
}
