package queue

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// delayConfig retries at 0, 3h, 9h, 21h, 45h after arrival: the delay
// DSNs due at 4h and 28h fall between attempts, so they need a wake-up of
// their own.
func delayConfig() Config {
	return Config{MinBackoff: 3 * time.Hour, MaxBackoff: 100 * time.Hour}
}

// delayedDSNs returns the delay DSNs among the deliveries.
func delayedDSNs(t *testing.T, ds []delivered) []dsnParts {
	t.Helper()
	var out []dsnParts
	for _, d := range dsns(ds) {
		p := parseDSN(t, d.Data)
		if p.header.Get("Subject") == "Delayed Mail (still being retried)" {
			out = append(out, p)
		}
	}
	return out
}

// TestDelayNotification: a recipient with NOTIFY=DELAY still undelivered
// 4 hours after arrival gets a DSN with Action: delayed, at 4 hours even
// when no attempt is due then, and one a day after that; the record of it
// survives a restart (no second DSN for the same period); it stops once
// the recipient is delivered. A recipient without NOTIFY=DELAY gets none.
func TestDelayNotification(t *testing.T) {
	dir := t.TempDir()
	var deliverNow atomic.Bool
	script := func(rcpt string, n int) policy.Reply {
		if deliverNow.Load() || rcpt == "a@example.org" { // the DSNs are delivered
			return reply(250, "2.0.0", "OK")
		}
		return reply(451, "4.4.1", "no answer from host")
	}
	h := newHarness(t, dir, delayConfig())
	h.tr.script = script
	t0 := h.clock.Now()
	h.start()
	tx := newTx("m1", "a@example.org", "b@example.com", "c@example.com")
	tx.Rcpts[0].Notify = []string{"DELAY", "FAILURE"}
	tx.Params.EnvID = "env-1"
	h.enqueue(tx, testMsg)
	h.wait("m1") // attempt 1 at 0
	h.setClock(t0.Add(3 * time.Hour))
	h.wait("m1") // attempt 2 at 3h
	assert.Empty(t, dsns(h.tr.deliveries()), "no delay DSN before 4 hours")
	assert.Equal(t, t0.Add(9*time.Hour), h.envelope("m1").NextAttempt)

	h.setClock(t0.Add(4 * time.Hour))
	h.wait("m1")
	h.waitOther("m1") // the delay DSN, delivered
	ds := delayedDSNs(t, h.tr.deliveries())
	require.Len(t, ds, 1)
	d := ds[0]
	assert.Equal(t, "Mail Delivery System <MAILER-DAEMON@mx.test>", d.header.Get("From"))
	assert.Equal(t, "<a@example.org>", d.header.Get("To"))
	assert.Equal(t, []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}, d.types, "the header only")
	assert.Contains(t, d.human, "THIS IS A WARNING ONLY")
	assert.Contains(t, d.human, "could not be delivered for 4 hours")
	assert.Contains(t, d.human, "retried until it is 5 days old")
	assert.Contains(t, d.status, "Original-Envelope-Id: env-1")
	assert.Contains(t, d.status, "Final-Recipient: rfc822; b@example.com")
	assert.NotContains(t, d.status, "c@example.com", "c did not ask for delay notifications")
	assert.Contains(t, d.status, "Action: delayed")
	assert.Contains(t, d.status, "Status: 4.4.1")
	assert.Contains(t, d.status, "Diagnostic-Code: smtp; 451 4.4.1 no answer from host")
	assert.Contains(t, d.status, "Will-Retry-Until: "+t0.Add(5*24*time.Hour).Format(time.RFC1123Z))
	assert.Contains(t, d.orig, "Subject: hello")
	env := h.envelope("m1")
	assert.Equal(t, t0.Add(4*time.Hour), env.DelayWarned)
	assert.Equal(t, 2, env.Attempts, "the delay DSN is no attempt")
	assert.Equal(t, Deferred, h.queueOf("m1"))

	// A restart: the record says this period's DSN went out.
	h.stop()
	require.NoError(t, h.sp.Close())
	h = newHarness(t, dir, delayConfig())
	h.tr.script = script
	h.setClock(t0.Add(4*time.Hour + time.Minute))
	h.start()
	h.wait("m1")
	for _, at := range []time.Duration{9 * time.Hour, 21 * time.Hour} {
		h.setClock(t0.Add(at))
		h.wait("m1")
	}
	assert.Empty(t, dsns(h.tr.deliveries()), "no second DSN for the first period")
	assert.Equal(t, 4, h.envelope("m1").Attempts)

	// A day after the first one, the second.
	h.setClock(t0.Add(28 * time.Hour))
	h.wait("m1")
	h.waitOther("m1")
	ds = delayedDSNs(t, h.tr.deliveries())
	require.Len(t, ds, 1)
	assert.Contains(t, ds[0].human, "could not be delivered for 28 hours")
	assert.Equal(t, t0.Add(28*time.Hour), h.envelope("m1").DelayWarned)

	// Delivered at 45h: no more DSNs, not even at 52h.
	deliverNow.Store(true)
	h.setClock(t0.Add(45 * time.Hour))
	h.wait("m1")
	assert.Empty(t, h.queueOf("m1"), "delivered")
	h.setClock(t0.Add(52 * time.Hour))
	assert.Len(t, dsns(h.tr.deliveries()), 1)
}

// TestDelayNotificationOff: no delay DSN when DelayWarning is negative,
// when the recipient did not ask for one, or to the null sender.
func TestDelayNotificationOff(t *testing.T) {
	tests := []struct {
		name   string
		warn   time.Duration
		from   string
		notify []string
	}{
		{"off", -1, "a@example.org", []string{"DELAY"}},
		{"not asked", 0, "a@example.org", []string{"FAILURE"}},
		{"no NOTIFY", 0, "a@example.org", nil},
		{"null sender", 0, "<>", []string{"DELAY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := delayConfig()
			cfg.DelayWarning = tt.warn
			h := newHarness(t, "", cfg)
			h.tr.script = func(string, int) policy.Reply { return reply(451, "4.4.1", "later") }
			t0 := h.clock.Now()
			h.start()
			tx := newTx("m1", tt.from, "b@example.com")
			tx.Rcpts[0].Notify = tt.notify
			h.enqueue(tx, testMsg)
			h.wait("m1")
			h.setClock(t0.Add(3 * time.Hour))
			h.wait("m1")
			h.setClock(t0.Add(9 * time.Hour)) // past 4h: an attempt
			h.wait("m1")
			h.stop()
			w, err := h.sp.List(Working)
			require.NoError(t, err)
			assert.Empty(t, w, "no DSN queued")
			assert.Empty(t, dsns(h.tr.deliveries()))
			assert.True(t, h.envelope("m1").DelayWarned.IsZero())
		})
	}
}

// TestDelayNotificationNotPastLifetime: no delay DSN falls due at or after
// the end of the message's lifetime (the failure DSN comes then).
func TestDelayNotificationNotPastLifetime(t *testing.T) {
	s := NewScheduler(nil, Config{Lifetime: 3 * time.Hour, Logger: quietLogger(), Hostname: "mx.test"})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	env := &Envelope{From: Addr{Local: "a", Domain: "example.org"}, Received: t0,
		Rcpts: []RcptState{{Addr: Addr{Local: "b", Domain: "example.com"}, Notify: []string{"DELAY"}, State: RcptPending}}}
	assert.True(t, s.delayDue(env).IsZero())
	s.cfg.Lifetime = 5 * 24 * time.Hour
	assert.Equal(t, t0.Add(4*time.Hour), s.delayDue(env))
	env.DelayWarned = t0.Add(5 * time.Hour)
	assert.Equal(t, t0.Add(29*time.Hour), s.delayDue(env))
	env.Rcpts[0].State = RcptDelivered
	assert.True(t, s.delayDue(env).IsZero())
}
