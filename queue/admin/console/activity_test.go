package console

import (
	"bytes"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func TestActivityChart(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 5, 0, 0, time.UTC)
	a := &Activity{now: func() time.Time { return now }}
	a.MessageReceived("mta", 250, 10)
	a.MessageReceived("mta", 250, 10)
	a.MessageReceived("mta", 554, 10)
	a.DeliveryAttempted("maildir", policy.Reply{Code: 250}, 0)
	a.DeliveryAttempted("smtp", policy.Reply{Code: 451}, 0)
	a.DeliveryAttempted("smtp", policy.Reply{Code: 550}, 0)
	a.Observe(policy.Decision{Stage: policy.StageRcpt, Rule: "relay", Verdict: policy.Deny(554, "5.7.1", "no")})
	a.Observe(policy.Decision{Stage: policy.StagePreQ, Rule: "antivirus", Verdict: policy.Quarantine("virus_q")})
	a.Observe(policy.Decision{Stage: policy.StagePreQ, Rule: "spam", Verdict: policy.Deny(550, "5.7.1", "spam")})
	a.Observe(policy.Decision{Stage: policy.StageMail, Rule: "spf", Verdict: policy.Next()})

	// An hour later, one more accepted; 25 hours later the first period
	// has left the chart.
	now = now.Add(time.Hour)
	a.MessageReceived("mta", 250, 10)
	c := a.Chart()
	require.Len(t, c.Series, 6)
	want := map[string][2]int{ // the count 6 periods before the last, and the last
		"accepted": {2, 1}, "refused": {2, 0}, "delivered": {1, 0}, "deferred": {1, 0}, "bounced": {1, 0}, "quarantined": {1, 0},
	}
	for _, s := range c.Series {
		require.Len(t, s.Counts, periods)
		assert.Equal(t, want[s.Name][0], s.Counts[periods-7], s.Name)
		assert.Equal(t, want[s.Name][1], s.Counts[periods-1], s.Name)
		assert.Equal(t, want[s.Name][0]+want[s.Name][1], s.Total, s.Name)
	}
	assert.Equal(t, time.Date(2026, 12, 3, 13, 10, 0, 0, time.UTC), c.Start.UTC())

	// The rules of the last hour: six periods back is too old.
	assert.Empty(t, a.TopRules(10))
	now = now.Add(-10 * time.Minute)
	assert.Equal(t, []Count{{"relay", 1}, {"spam", 1}}, a.TopRules(10))

	now = now.Add(25 * time.Hour)
	for _, s := range a.Chart().Series {
		assert.Zero(t, s.Total, s.Name)
	}
}

func TestActivityLog(t *testing.T) {
	a := &Activity{LogSize: 3}
	var out bytes.Buffer
	log := slog.New(a.LogHandler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})))
	conn := log.With("conn", "c1", "listener", "mta", "remote", "192.0.2.9:5000")
	conn.Info("connect", "rdns", "x")
	conn.Info("mail", "id", "q1", "from", "<a@example.org>", "verdict", "next")
	conn.Info("rcpt", "id", "q1", "to", "<nobody@doe-family.com>", "verdict", "deny(550 5.1.1 no such user)", "rule", "recipients")
	conn.Info("rcpt", "id", "q1", "to", "<jane@doe-family.com>", "verdict", "accept", "rule", "recipients")
	conn.Info("queued", "id", "q1", "from", "<a@example.org>", "rcpts", 1)
	log.Info("queue: result", "id", "q1", "from", "<a@example.org>", "to", "<jane@doe-family.com>", "relay", "maildir", "status", "delivered", "reply", "250 2.0.0 ok")
	assert.Empty(t, out.String(), "INFO records do not reach a WARN handler")
	log.Warn("something")
	assert.Contains(t, out.String(), "something")

	lines := a.Log(LogFilter{}, 10)
	require.Len(t, lines, 2)
	assert.Equal(t, LogLine{Time: lines[0].Time, ID: "q1", Client: "192.0.2.9", From: "<a@example.org>", To: "<jane@doe-family.com>", Status: "delivered", Detail: "250 2.0.0 ok"}, lines[0])
	assert.Equal(t, LogLine{Time: lines[1].Time, ID: "q1", Client: "192.0.2.9", From: "<a@example.org>", To: "<nobody@doe-family.com>", Status: "refused", Rule: "recipients", Detail: "550 5.1.1 no such user"}, lines[1])
	assert.Equal(t, []Count{{"192.0.2.9", 1}}, a.TopClients(5))

	assert.Len(t, a.Log(LogFilter{Address: "NOBODY@"}, 10), 1)
	assert.Len(t, a.Log(LogFilter{Client: "192.0.2."}, 10), 2)
	assert.Len(t, a.Log(LogFilter{Client: "198.51.100.1"}, 10), 0)
	assert.Len(t, a.Log(LogFilter{ID: "q1"}, 10), 2)
	assert.Len(t, a.Log(LogFilter{}, 1), 1)

	// A ring of 3: the oldest go.
	log.Info("connection refused by rule", "remote", "203.0.113.5:1", "rule", "dnsbl", "reply", "554 5.7.1 listed")
	log.Info("message refused: NUL byte", "id", "q2", "size", 3)
	lines = a.Log(LogFilter{}, 10)
	require.Len(t, lines, 3)
	assert.Equal(t, "message refused: NUL byte", lines[0].Detail)
	assert.Equal(t, "203.0.113.5", lines[1].Client)
	assert.Equal(t, "dnsbl", lines[1].Rule)
	assert.Equal(t, "554 5.7.1 listed", lines[1].Detail)
	assert.Equal(t, "delivered", lines[2].Status)

	// Records in a group are passed on, not read.
	log.WithGroup("g").Info("queue: result", "id", "q3", "status", "delivered")
	assert.Len(t, a.Log(LogFilter{ID: "q3"}, 10), 0)
}

func TestActivityBounded(t *testing.T) {
	a := &Activity{}
	log := slog.New(a.LogHandler(slog.NewTextHandler(io.Discard, nil)))
	for i := range maxKeys + 10 {
		log.Info("queued", "id", "m"+strconv.Itoa(i), "remote", "10.0."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256)+":25")
	}
	top := a.TopClients(2000)
	assert.Len(t, top, maxKeys+1, "at most maxKeys clients, then (other)")
	assert.Equal(t, "(other)", top[0].Name)
	assert.Equal(t, 10, top[0].Count)
}
