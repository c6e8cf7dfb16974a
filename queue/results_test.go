package queue

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// resultLines returns the "queue: result" records of id in JSON logs.
func resultLines(t *testing.T, logs, id string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(logs, "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec), l)
		if rec["msg"] == resultMsg && rec["id"] == id {
			delete(rec, "time")
			out = append(out, rec)
		}
	}
	return out
}

// TestResultLines: each recipient gets one INFO result line when its
// delivery ends (delivered, bounced, expired), a deferred line per
// attempt before that, each with the keys an operator greps.
func TestResultLines(t *testing.T) {
	var logs lockedBuffer
	h := newHarness(t, "", Config{MinBackoff: time.Minute, Lifetime: time.Hour,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	h.tr.script = func(rcpt string, n int) policy.Reply {
		switch rcpt {
		case "bad@example.com":
			return policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}
		case "later@example.com":
			return policy.Reply{Code: 451, Text: "Try later"} // no enhanced code: 4.0.0 is logged
		}
		return policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	}
	h.start()
	start := h.clock.Now()
	h.enqueue(newTx("m1", "a@example.org", "ok@example.com", "bad@example.com", "later@example.com"), testMsg)
	h.wait("m1")
	h.waitOther("m1") // the DSN for bad@

	base := func(to, status, dsn, reply string, attempts float64) map[string]any {
		return map[string]any{"level": "INFO", "msg": resultMsg, "id": "m1", "from": "<a@example.org>", "to": to,
			"relay": "fake", "delay": 0.0, "attempts": attempts, "dsn": dsn, "status": status, "reply": reply}
	}
	assert.Equal(t, []map[string]any{
		base("<ok@example.com>", "delivered", "2.0.0", "250 2.0.0 OK", 1),
		base("<bad@example.com>", "bounced", "5.1.1", "550 5.1.1 No such user", 1),
		base("<later@example.com>", "deferred", "4.0.0", "451 Try later", 1),
	}, resultLines(t, logs.String(), "m1"))

	// The lifetime runs out at the next attempt: later@ expires.
	h.setClock(start.Add(2 * time.Hour))
	h.wait("m1")
	got := resultLines(t, logs.String(), "m1")
	require.Len(t, got, 4)
	want := base("<later@example.com>", "expired", "4.4.7", "451 4.4.7 Message expired; last error: 451 Try later", 2)
	want["delay"] = 7200.0
	assert.Equal(t, want, got[3])
	// The per-attempt lines are DEBUG now: not in an INFO log.
	assert.NotContains(t, logs.String(), `"msg":"queue: delivery"`)
}

// TestResultLinesQuarantine: a message quarantined by postq, at delivery
// or before the queue (preq) ends there for every recipient, in a result
// line naming the quarantine.
func TestResultLinesQuarantine(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("spam", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if tx.ID == "postq" {
			return policy.Quarantine("spam")
		}
		return policy.Next()
	})
	chain.Delivery("hold", func(ctx context.Context, tx *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
		if tx.ID == "delivery" {
			return policy.Quarantine("held")
		}
		return policy.Next()
	})
	var logs lockedBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := newHarness(t, "", Config{Chain: chain, Logger: log})
	h.sp.log = log
	h.start()
	preq := newTx("preq", "a@example.org", "b@example.com")
	preq.SetQuarantine("virus_q")
	h.enqueue(preq, testMsg)
	h.enqueue(newTx("postq", "a@example.org", "b@example.com", "c@example.com"), testMsg)
	h.enqueue(newTx("delivery", "a@example.org", "b@example.com"), testMsg)
	h.wait("postq")
	h.wait("delivery")

	for _, c := range []struct {
		id, queue string
		rcpts     []string
	}{
		{"preq", "quarantine/virus_q", []string{"<b@example.com>"}},
		{"postq", "quarantine/spam", []string{"<b@example.com>", "<c@example.com>"}},
		{"delivery", "quarantine/held", []string{"<b@example.com>"}},
	} {
		got := resultLines(t, logs.String(), c.id)
		require.Len(t, got, len(c.rcpts), c.id)
		for i, rec := range got {
			assert.Equal(t, c.rcpts[i], rec["to"], c.id)
			assert.Equal(t, "quarantined", rec["status"], c.id)
			assert.Equal(t, c.queue, rec["queue"], c.id)
			assert.Equal(t, "none", rec["relay"], c.id)
		}
	}
	assert.Equal(t, 0, h.tr.callCount())
}
