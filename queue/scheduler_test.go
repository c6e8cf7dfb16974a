package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func reply(code int, enh, text string) policy.Reply {
	return policy.Reply{Code: code, Enhanced: enh, Text: text}
}

func TestDeliverAndRemove(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com", "c@example.com"), testMsg)
	h.wait("m1")
	ds := h.tr.deliveries()
	require.Len(t, ds, 2)
	assert.ElementsMatch(t, []string{"b@example.com", "c@example.com"}, rcptsOf(ds))
	assert.Equal(t, testMsg, string(ds[0].Data))
	assert.Equal(t, 1, h.tr.callCount(), "one route: one transport call for both recipients")
	assert.Equal(t, "", h.queueOf("m1"), "delivered message is removed")
	for _, q := range []string{"tmp", Working, Deliver} {
		ents, err := os.ReadDir(filepath.Join(h.sp.root, q))
		require.NoError(t, err)
		assert.Empty(t, ents, "entry file removed from %s", q)
	}
}

func TestOneOfThreeDeferredThenRetriedAlone(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if rcpt == "c@example.com" && n == 0 {
			return reply(451, "4.2.1", "mailbox busy")
		}
		return reply(250, "2.0.0", "OK")
	}
	h.start()
	t0 := h.clock.Now()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com", "c@example.com", "d@example.com"), testMsg)
	h.wait("m1")
	assert.Equal(t, Deferred, h.queueOf("m1"))
	env := h.envelope("m1")
	assert.Equal(t, 1, env.Attempts)
	assert.Equal(t, t0.Add(5*time.Minute), env.NextAttempt, "first retry after MinBackoff")
	states := map[string]string{}
	for _, r := range env.Rcpts {
		states[r.Addr.Address().String()] = r.State
	}
	assert.Equal(t, map[string]string{"b@example.com": RcptDelivered, "c@example.com": RcptPending, "d@example.com": RcptDelivered}, states)
	assert.Contains(t, env.LastError, "4.2.1")

	h.clock.Advance(5 * time.Minute)
	h.wait("m1")
	ds := h.tr.deliveries()
	require.Len(t, ds, 4)
	assert.Equal(t, "c@example.com", ds[3].Rcpt, "only the deferred recipient is retried")
	assert.Equal(t, "", h.queueOf("m1"))
	assert.Empty(t, dsns(ds), "no DSN for a delivered message")
}

func TestRetryScheduleAndExpiry(t *testing.T) {
	h := newHarness(t, "", Config{MinBackoff: 5 * time.Minute, MaxBackoff: 20 * time.Minute, Lifetime: time.Hour})
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if rcpt == "a@example.org" {
			return reply(250, "2.0.0", "OK") // the DSN
		}
		return reply(451, "4.4.1", "no answer")
	}
	h.start()
	t0 := h.clock.Now()
	tx := newTx("m1", "a@example.org", "b@example.com")
	tx.Params.EnvID = "env-42"
	h.enqueue(tx, testMsg)
	h.wait("m1")
	// Attempts at 0, 5m, 15m, 35m, 55m; then the lifetime (1h) caps the next.
	want := []time.Duration{5 * time.Minute, 15 * time.Minute, 35 * time.Minute, 55 * time.Minute, time.Hour}
	for i, w := range want {
		env := h.envelope("m1")
		require.Equal(t, Deferred, h.queueOf("m1"))
		assert.Equal(t, i+1, env.Attempts)
		require.Equal(t, t0.Add(w), env.NextAttempt, "attempt %d", i+1)
		// A minute early: nothing happens.
		h.clock.Set(t0.Add(w - time.Minute))
		assert.Equal(t, i+1, len(h.tr.deliveries()))
		h.clock.Set(t0.Add(w))
		h.wait("m1")
	}
	assert.Equal(t, Dead, h.queueOf("m1"), "expired message is dead")
	env := h.envelope("m1")
	assert.Equal(t, RcptFailed, env.Rcpts[0].State)
	assert.Equal(t, "4.4.7", env.Rcpts[0].Reply.Enhanced)
	assert.True(t, env.Rcpts[0].DSN)

	h.waitOther("m1") // the DSN's delivery
	ds := dsns(h.tr.deliveries())
	require.Len(t, ds, 1)
	assert.Equal(t, "a@example.org", ds[0].Rcpt)
	rep := parseDSN(t, ds[0].Data)
	assert.Contains(t, rep.status, "Action: failed")
	assert.Contains(t, rep.status, "Status: 4.4.7")
	assert.Contains(t, rep.status, "Original-Envelope-Id: env-42")
}

type dsnParts struct {
	header textproto.Header
	human  string
	status string
	orig   string
	types  []string
}

// parseDSN parses a DSN with go-message and checks its structure.
func parseDSN(t *testing.T, data []byte) dsnParts {
	t.Helper()
	e, err := gomessage.Read(bytes.NewReader(data))
	require.NoError(t, err)
	mt, params, err := e.Header.ContentType()
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	require.Equal(t, "delivery-status", params["report-type"])
	var out dsnParts
	out.header = e.Header.Header
	mr := e.MultipartReader()
	require.NotNil(t, mr)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		pt, _, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
		require.NoError(t, err)
		out.types = append(out.types, pt)
		b, err := io.ReadAll(p.Body)
		require.NoError(t, err)
		switch pt {
		case "text/plain":
			out.human = string(b)
		case "message/delivery-status":
			out.status = string(b)
		default:
			out.orig = string(b)
		}
	}
	return out
}

func TestPermanentFailureDSN(t *testing.T) {
	tests := []struct {
		name     string
		ret      string
		wantType string
		wantBody bool
	}{
		{"full", "FULL", "message/rfc822", true},
		{"default", "", "message/rfc822", true},
		{"headers", "HDRS", "text/rfc822-headers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "", Config{})
			h.tr.script = func(rcpt string, n int) policy.Reply {
				if rcpt == "bad@example.com" {
					return reply(550, "5.1.1", "no such user")
				}
				return reply(250, "2.0.0", "OK")
			}
			h.start()
			tx := newTx("m1", "a@example.org", "good@example.com", "bad@example.com")
			tx.Params.Ret = tt.ret
			tx.Params.EnvID = "abc123"
			tx.Rcpts[1].ORCPT = "rfc822;Bad@Example.com"
			h.enqueue(tx, testMsg)
			h.wait("m1")
			assert.Equal(t, Dead, h.queueOf("m1"))
			h.waitOther("m1") // the DSN
			ds := dsns(h.tr.deliveries())
			require.Len(t, ds, 1)
			assert.Equal(t, "a@example.org", ds[0].Rcpt)
			d := parseDSN(t, ds[0].Data)
			assert.Equal(t, []string{"text/plain", "message/delivery-status", tt.wantType}, d.types)
			assert.Equal(t, "Mail Delivery System <MAILER-DAEMON@mx.test>", d.header.Get("From"))
			assert.Equal(t, "<a@example.org>", d.header.Get("To"))
			assert.Contains(t, d.status, "Reporting-MTA: dns; mx.test")
			assert.Contains(t, d.status, "Original-Envelope-Id: abc123")
			assert.Contains(t, d.status, "Final-Recipient: rfc822; bad@example.com")
			assert.Contains(t, d.status, "Original-Recipient: rfc822;Bad@Example.com")
			assert.Contains(t, d.status, "Action: failed")
			assert.Contains(t, d.status, "Status: 5.1.1")
			assert.Contains(t, d.status, "Diagnostic-Code: smtp; 550 5.1.1 no such user")
			assert.NotContains(t, d.status, "good@example.com", "only failed recipients are reported")
			assert.Contains(t, d.orig, "Subject: hello")
			assert.Equal(t, tt.wantBody, strings.Contains(d.orig, "Hello world."))
		})
	}
}

func TestNotify(t *testing.T) {
	tests := []struct {
		name    string
		from    string
		notify  []string
		fail    bool
		wantDSN string // "" none, else the Action
	}{
		{"failure default", "a@example.org", nil, true, "failed"},
		{"failure asked", "a@example.org", []string{"FAILURE"}, true, "failed"},
		{"never", "a@example.org", []string{"NEVER"}, true, ""},
		{"success only, failed", "a@example.org", []string{"SUCCESS"}, true, ""},
		{"success", "a@example.org", []string{"SUCCESS", "FAILURE"}, false, "delivered"},
		{"no success asked", "a@example.org", []string{"FAILURE"}, false, ""},
		{"null sender failure", "<>", nil, true, ""},
		{"null sender success", "<>", []string{"SUCCESS"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "", Config{})
			h.tr.script = func(rcpt string, n int) policy.Reply {
				if tt.fail && rcpt == "b@example.com" {
					return reply(550, "5.1.1", "no such user")
				}
				return reply(250, "2.0.0", "OK")
			}
			h.start()
			tx := newTx("m1", tt.from, "b@example.com")
			tx.Rcpts[0].Notify = tt.notify
			h.enqueue(tx, testMsg)
			h.wait("m1")
			if tt.wantDSN == "" {
				// Stop the scheduler so any DSN would be sitting in working.
				h.stop()
				w, err := h.sp.List(Working)
				require.NoError(t, err)
				assert.Empty(t, w, "no DSN queued")
				assert.Empty(t, dsns(h.tr.deliveries()))
				return
			}
			h.waitOther("m1")
			ds := dsns(h.tr.deliveries())
			require.Len(t, ds, 1)
			d := parseDSN(t, ds[0].Data)
			assert.Contains(t, d.status, "Action: "+tt.wantDSN)
		})
	}
}

func TestDSNIsNeverBouncedItself(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.tr.script = func(rcpt string, n int) policy.Reply { return reply(550, "5.1.1", "no") }
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	dsnID := h.waitOther("m1") // the DSN, which fails too
	assert.Equal(t, Dead, h.queueOf(dsnID))
	env := h.envelope(dsnID)
	assert.True(t, env.DSN)
	assert.True(t, env.From.Address().IsNull())
	h.stop()
	w, err := h.sp.List(Working)
	require.NoError(t, err)
	assert.Empty(t, w, "no DSN of a DSN")
	assert.Len(t, h.tr.deliveries(), 2)
}

func TestQuarantineAndRelease(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.start()
	tx := newTx("m1", "a@example.org", "b@example.com")
	tx.SetQuarantine("virus")
	h.enqueue(tx, testMsg)
	assert.Equal(t, "quarantine/virus", h.queueOf("m1"))
	qs, err := h.sp.Queues()
	require.NoError(t, err)
	assert.Contains(t, qs, "quarantine/virus")
	l, err := h.sp.List("quarantine/virus")
	require.NoError(t, err)
	assert.Equal(t, []string{"m1"}, ids(l))
	assert.Empty(t, h.tr.deliveries())

	require.NoError(t, h.sp.Move(context.Background(), "m1", Deliver))
	h.wait("m1")
	assert.Equal(t, "", h.queueOf("m1"))
	require.Len(t, h.tr.deliveries(), 1)
}

func TestPostQQuarantineAndRelease(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("spam", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		m.Header.Add("X-Spam", "yes")
		return policy.Quarantine("spam")
	})
	h := newHarness(t, "", Config{Chain: chain})
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	require.Equal(t, "quarantine/spam", h.queueOf("m1"))
	it, err := h.sp.Show("m1")
	require.NoError(t, err)
	assert.Equal(t, "yes", it.Header.Get("X-Spam"), "header edits kept with the quarantined message")

	// Released to deliver: delivered as it is, the postq rule does not
	// quarantine it again.
	require.NoError(t, h.sp.Move(context.Background(), "m1", Deliver))
	h.wait("m1")
	assert.Equal(t, "", h.queueOf("m1"))
	ds := h.tr.deliveries()
	require.Len(t, ds, 1)
	assert.Equal(t, 1, strings.Count(string(ds[0].Data), "X-Spam: yes"))

	// Moved to working instead, the postq rules run again.
	h.enqueue(newTx("m2", "a@example.org", "b@example.com"), testMsg)
	h.wait("m2")
	require.NoError(t, h.sp.Move(context.Background(), "m2", Working))
	h.wait("m2")
	assert.Equal(t, "quarantine/spam", h.queueOf("m2"))
}

func TestPostQ(t *testing.T) {
	var fail atomic.Bool
	var runs atomic.Int32
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("test", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		runs.Add(1)
		switch m.Header.Get("X-Test") {
		case "deny":
			return policy.Deny(550, "5.7.1", "content rejected")
		case "defer":
			return policy.Defer("4.7.0", "try later")
		case "panic":
			if fail.Load() {
				panic("boom")
			}
		case "fail":
			if fail.Load() {
				return policy.Fail(errors.New("database down"))
			}
		case "quarantine":
			return policy.Quarantine("spam")
		}
		m.Header.Add("X-Signed", "yes")
		return policy.Next()
	})
	tests := []struct {
		name      string
		hdr       string
		wantQueue string
		wantDSN   bool
		retryOK   bool // after turning fail off and advancing, delivered
	}{
		{"accept", "none", "", false, false},
		{"deny bounces", "deny", Dead, true, false},
		{"defer", "defer", Deferred, false, false},
		{"panic defers", "panic", Deferred, false, true},
		{"fail defers", "fail", Deferred, false, true},
		{"quarantine", "quarantine", "quarantine/spam", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fail.Store(true)
			h := newHarness(t, "", Config{Chain: chain})
			h.start()
			h.enqueue(newTx("m1", "a@example.org", "b@example.com"), "X-Test: "+tt.hdr+"\r\n"+testMsg)
			h.wait("m1")
			assert.Equal(t, tt.wantQueue, h.queueOf("m1"))
			if tt.wantDSN {
				h.waitOther("m1")
				ds := dsns(h.tr.deliveries())
				require.Len(t, ds, 1)
				d := parseDSN(t, ds[0].Data)
				assert.Contains(t, d.status, "Diagnostic-Code: smtp; 550 5.7.1 content rejected")
			}
			if tt.wantQueue == "" {
				ds := h.tr.deliveries()
				require.Len(t, ds, 1)
				assert.True(t, strings.HasPrefix(string(ds[0].Data), "X-Signed: yes\r\nX-Test: none\r\n"))
			}
			if tt.retryOK {
				assert.Equal(t, 1, h.envelope("m1").Attempts)
				fail.Store(false)
				h.clock.Advance(5 * time.Minute)
				h.wait("m1")
				assert.Equal(t, "", h.queueOf("m1"), "delivered on retry")
				require.Len(t, h.tr.deliveries(), 1)
			}
		})
	}
}

func TestPostQSkippedWhenForceAccepted(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("deny-all", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		return policy.Deny(550, "5.7.1", "no")
	})
	h := newHarness(t, "", Config{Chain: chain})
	h.start()
	tx := newTx("m1", "a@example.org", "b@example.com")
	tx.SetForceAccepted(true)
	h.enqueue(tx, testMsg)
	h.enqueue(newTx("m2", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	assert.Equal(t, "", h.queueOf("m1"), "force-accepted: delivered without postq")
	h.wait("m2")
	assert.Equal(t, Dead, h.queueOf("m2"), "the same rule bounces the other")
}

func TestPostQEditsSavedAndNotRepeated(t *testing.T) {
	var runs atomic.Int32
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("sign", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		runs.Add(1)
		m.Header.AddRaw([]byte("DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=abc\r\n"))
		return policy.Next()
	})
	h := newHarness(t, "", Config{Chain: chain})
	h.tr.script = func(rcpt string, n int) policy.Reply {
		if n == 0 {
			return reply(451, "4.4.1", "later")
		}
		return reply(250, "2.0.0", "OK")
	}
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	require.Equal(t, Deferred, h.queueOf("m1"))
	env := h.envelope("m1")
	assert.True(t, env.PostQDone)
	assert.True(t, strings.HasPrefix(string(env.Head), "DKIM-Signature:"), "edits stored durably in the envelope")
	b, err := os.ReadFile(filepath.Join(h.sp.root, Deferred, "m1.q"))
	require.NoError(t, err)
	assert.Equal(t, entryHeadLen+len(testMsg), bytes.Index(b, []byte("\nE "))+1, "the stored message is not rewritten: records follow it")
	_, _, m, err := h.sp.Load("m1")
	require.NoError(t, err)
	var got bytes.Buffer
	_, err = m.WriteTo(&got)
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=abc\r\n"+testMsg, got.String(), "loaded with the edit")

	// Restart from the same directory: the edit survives, postq is not run again.
	h.stop()
	require.NoError(t, h.sp.Close())
	h2 := newHarness(t, h.sp.root, Config{Chain: chain})
	h2.tr = h.tr
	h2.sch.cfg.Transports["fake"] = h.tr
	h2.clock.Set(h.clock.Now().Add(5 * time.Minute))
	h2.start()
	h2.wait("m1")
	assert.Equal(t, "", h2.queueOf("m1"))
	ds := h.tr.deliveries()
	require.Len(t, ds, 2)
	assert.Equal(t, 1, strings.Count(string(ds[1].Data), "DKIM-Signature:"))
	assert.Equal(t, int32(1), runs.Load(), "postq ran once")
}

func TestDeliveryRulesAndRoutes(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.Delivery("route", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		switch rcpt.Addr.Local {
		case "local":
			*route = policy.Route{Transport: "fake", Target: "box"}
		case "dropme":
			*route = policy.Route{Transport: DropTransport}
		case "nowhere":
			*route = policy.Route{Transport: "lmtp"} // not configured
		case "denied":
			return policy.Deny(550, "5.1.1", "unknown user")
		case "tempdenied":
			return policy.Defer("4.3.0", "directory down")
		}
		return policy.Next()
	})
	h := newHarness(t, "", Config{Chain: chain, DefaultRoute: policy.Route{Transport: "fake", Target: "default"}})
	h.start()
	tx := newTx("m1", "a@example.org", "local@example.com", "other@example.com", "dropme@example.com",
		"nowhere@example.com", "denied@example.com", "tempdenied@example.com")
	tx.Rcpts[4].Notify = []string{"NEVER"} // no DSN delivery racing with the checks
	h.enqueue(tx, testMsg)
	h.wait("m1")
	ds := h.tr.deliveries()
	routes := map[string]policy.Route{}
	for _, d := range ds {
		routes[d.Rcpt] = d.Route
	}
	assert.Equal(t, map[string]policy.Route{
		"local@example.com": {Transport: "fake", Target: "box"},
		"other@example.com": {Transport: "fake", Target: "default"},
	}, routes)
	assert.Equal(t, 2, h.tr.callCount(), "one call per route")
	require.Equal(t, Deferred, h.queueOf("m1"))
	env := h.envelope("m1")
	got := map[string]string{}
	for _, r := range env.Rcpts {
		got[r.Addr.Local] = r.State + " " + r.Reply.Enhanced
	}
	assert.Equal(t, map[string]string{
		"local": "delivered 2.0.0", "other": "delivered 2.0.0", "dropme": "delivered 2.0.0",
		"nowhere": "pending 4.3.5", "denied": "failed 5.1.1", "tempdenied": "pending 4.3.0",
	}, got)
}

func TestBadTransportReplies(t *testing.T) {
	tests := []struct {
		name string
		tr   TransportFunc
	}{
		{"panic", func(ctx context.Context, d *policy.Delivery) []policy.Reply { panic("bug") }},
		{"too few", func(ctx context.Context, d *policy.Delivery) []policy.Reply { return nil }},
		{"bad code", func(ctx context.Context, d *policy.Delivery) []policy.Reply {
			return []policy.Reply{{Code: 354}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "", Config{Transports: map[string]Transport{"fake": tt.tr}})
			h.start()
			h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
			h.wait("m1")
			assert.Equal(t, Deferred, h.queueOf("m1"), "never lost, never delivered")
			assert.Equal(t, 451, h.envelope("m1").Rcpts[0].Reply.Code)
		})
	}
}

func TestCorruptEntriesSetAside(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// A good message, a truncated one, one with a garbage envelope, one
	// whose message file vanished, found by a process started after the
	// damage (one that enqueued them itself keeps what it wrote: hotEntry).
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	for _, id := range []string{"good", "trunc", "nomsg"} {
		require.NoError(t, sp.Enqueue(ctx, newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	require.NoError(t, sp.Close())
	require.NoError(t, os.Truncate(filepath.Join(dir, Working, "trunc.q"), 40))
	// "nomsg": its envelope record damaged (a flipped byte fails the checksum).
	p := filepath.Join(dir, Working, "nomsg.q")
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	b[len(b)-5] ^= 0x20
	require.NoError(t, os.WriteFile(p, b, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, Deferred, "garbage.q"), []byte(`{"v":1,"id":"garb`), 0o600))
	h := newHarness(t, dir, Config{})
	h.start()
	h.waitN(4)
	assert.Equal(t, "", h.queueOf("good"), "the queue goes on")
	require.Len(t, h.tr.deliveries(), 1)
	l, err := h.sp.List(Corrupt)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"trunc", "nomsg", "garbage"}, ids(l))
	_, err = os.Stat(filepath.Join(dir, Corrupt, "trunc.q"))
	assert.NoError(t, err, "the entry is kept for inspection")
	_, err = os.Stat(filepath.Join(dir, Corrupt, "garbage.q"))
	assert.NoError(t, err)
	// The admin can inspect and delete what was set aside.
	require.NoError(t, h.sp.Delete(context.Background(), "trunc"))
	_, err = os.Stat(filepath.Join(dir, Corrupt, "trunc.q"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestRestartPicksUpEverything(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	ctx := context.Background()
	for _, id := range []string{"w1", "w2", "d1", "f1"} {
		require.NoError(t, sp.Enqueue(ctx, newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	require.NoError(t, sp.Move(ctx, "d1", Deliver))
	require.NoError(t, sp.Move(ctx, "f1", Deferred))
	// Leftovers of an interrupted write: removed at open. A torn record
	// appended to w1 (a crash during an update) is ignored.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "x.q"), []byte("{"), 0o600))
	f, err := os.OpenFile(filepath.Join(dir, Working, "w1.q"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString("E 00000400 00000000\n{\"v\":2,")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, sp.Close())

	h := newHarness(t, dir, Config{})
	_, err = os.Stat(filepath.Join(dir, "tmp", "x.q"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.Equal(t, Working, h.queueOf("w1"), "a torn record leaves the entry readable")
	h.start()
	got := h.waitN(4)
	assert.ElementsMatch(t, []string{"w1", "w2", "d1", "f1"}, got)
	assert.Len(t, h.tr.deliveries(), 4)
	for _, q := range []string{Working, Deliver, Deferred, Dead, Corrupt} {
		l, err := h.sp.List(q)
		require.NoError(t, err)
		assert.Empty(t, l, q)
	}
}

func TestRestartHonoursRecordedNextAttempt(t *testing.T) {
	// A message in deliver whose last attempt finished (none in flight)
	// with its next attempt recorded: a restart waits for it instead of
	// hammering. (An attempt the process stopped during is resumed at
	// once: see TestResumeInterruptedAttempt.)
	h := newHarness(t, "", Config{})
	h.tr.script = func(string, int) policy.Reply { return reply(451, "4.0.0", "x") }
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	h.stop()
	require.NoError(t, h.sp.Move(context.Background(), "m1", Deferred)) // resets next attempt to now
	env := h.envelope("m1")
	env.NextAttempt = h.clock.Now().Add(time.Hour)
	require.NoError(t, h.sp.update(context.Background(), env, Deferred, Deliver, true))
	h.start()
	h.wait("m1")
	assert.Len(t, h.tr.deliveries(), 1, "not tried before its time")
	h.clock.Advance(time.Hour)
	h.wait("m1")
	assert.Len(t, h.tr.deliveries(), 2)
}

// TestWorkersBoundAndStop: at most Workers messages are in their transport
// at once, every message is delivered, and Run returns only after the
// attempts under way have ended (they are cut short by its context).
func TestWorkersBoundAndStop(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	const workers, n = 3, 12
	var inside, most, delivered atomic.Int64
	full := make(chan struct{}, n)
	release := make(chan struct{})
	tr := TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		now := inside.Add(1)
		defer inside.Add(-1)
		for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
		}
		full <- struct{}{}
		if d.Tx.ID == "last" {
			<-ctx.Done()
		} else {
			<-release
		}
		delivered.Add(1)
		return []policy.Reply{{Code: 250, Enhanced: "2.0.0", Text: "ok"}}
	})
	sch := NewScheduler(sp, Config{Workers: workers, Transports: map[string]Transport{"t": tr},
		DefaultRoute: policy.Route{Transport: "t"}, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- sch.Run(ctx) }()
	for i := range n {
		require.NoError(t, sp.Enqueue(context.Background(), newTx(fmt.Sprintf("w%d", i), "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	for range workers {
		<-full // Workers attempts under way
	}
	close(release)
	for range n - workers {
		<-full
	}
	require.Eventually(t, func() bool { ids, _ := sp.IDs(Deliver); return delivered.Load() == n && len(ids) == 0 },
		10*time.Second, time.Millisecond)
	assert.Equal(t, int64(workers), most.Load(), "attempts at once")

	// Stopping waits for the attempt under way, which ctx cuts short.
	require.NoError(t, sp.Enqueue(context.Background(), newTx("last", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	<-full
	cancel()
	require.ErrorIs(t, <-stopped, context.Canceled)
	assert.Zero(t, inside.Load(), "Run returned with an attempt under way")
}

// resultKey is a typed result a mail rule leaves for postq and delivery.
const resultKey policy.Key[struct {
	Verdict string   `json:"verdict"`
	Reasons []string `json:"reasons"`
}] = "queue_test.result"

// TestValuesSurviveQueue: a typed result stored before queueing is what the
// postq and delivery rules read from the transaction the queue rebuilds,
// after a restart too (the scheduler reads it from the entry on disk).
func TestValuesSurviveQueue(t *testing.T) {
	var postq, delivery atomic.Value
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("read-postq", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		r, ok := resultKey.Get(tx)
		postq.Store(fmt.Sprintln(ok, r.Verdict, r.Reasons))
		return policy.Next()
	})
	chain.Delivery("read-delivery", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		r, ok := resultKey.Get(tx)
		delivery.Store(fmt.Sprintln(ok, r.Verdict, r.Reasons))
		return policy.Next()
	})
	dir := t.TempDir()
	h := newHarness(t, dir, Config{Chain: chain})
	tx := newTx("v1", "a@example.org", "b@example.com")
	v, _ := resultKey.Get(tx)
	v.Verdict, v.Reasons = "pass", []string{"spf", "dkim"}
	resultKey.Set(tx, v)
	h.enqueue(tx, testMsg)
	h.sp.Close() // a restart between the 250 and postq

	h = newHarness(t, dir, Config{Chain: chain})
	h.start()
	h.wait("v1")
	assert.Equal(t, "", h.queueOf("v1"), "delivered")
	assert.Equal(t, "true pass [spf dkim]\n", postq.Load())
	assert.Equal(t, "true pass [spf dkim]\n", delivery.Load())
}

// TestValueNotKept: a value JSON cannot encode fails Enqueue, so the server
// answers 4xx rather than accept mail whose results it cannot keep.
func TestValueNotKept(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	tx := newTx("v2", "a@example.org", "b@example.com")
	policy.Key[chan int]("queue_test.chan").Set(tx, make(chan int))
	err = sp.Enqueue(context.Background(), tx, newMessage(t, testMsg))
	require.ErrorContains(t, err, "queue_test.chan")
	ids, err := sp.IDs(Working)
	require.NoError(t, err)
	assert.Empty(t, ids, "nothing queued")
}

// failingReaderAt reads r up to from; every read at or beyond from fails
// with errFailingRead (a disk error in the stored message's body).
type failingReaderAt struct {
	r    io.ReaderAt
	from int64
}

var errFailingRead = errors.New("injected read error")

func (f *failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.from {
		return 0, errFailingRead
	}
	return f.r.ReadAt(p, off)
}

// TestDSNNotQueuedTruncated: a DSN returning the whole message is not
// queued when the message cannot be read (the bounce fails, to be retried),
// while a header-only DSN, which does not read the body, is.
func TestDSNNotQueuedTruncated(t *testing.T) {
	h := newHarness(t, "", Config{})
	defer h.sp.Close()
	raw := testMsg + strings.Repeat("body line\r\n", 20<<10)
	bodyOff := int64(strings.Index(testMsg, "\r\n\r\n") + 4)
	for _, tt := range []struct {
		ret     string
		wantErr bool
	}{{"FULL", true}, {"HDRS", false}} {
		t.Run(tt.ret, func(t *testing.T) {
			m, err := policy.NewMessage(&failingReaderAt{r: strings.NewReader(raw), from: bodyOff + 4096}, int64(len(raw)), nil)
			require.NoError(t, err)
			env := &Envelope{
				ID:     "m-" + tt.ret,
				From:   Addr{Local: "a", Domain: "example.org"},
				Params: Params{Ret: tt.ret},
				Rcpts:  []RcptState{{Addr: Addr{Local: "b", Domain: "example.com"}, State: RcptFailed, Reply: reply(550, "5.1.1", "no such user")}},
			}
			err = h.sch.bounce(context.Background(), env, m, []int{0}, "failed")
			ids, lerr := h.sp.IDs(Working)
			require.NoError(t, lerr)
			if tt.wantErr {
				require.ErrorIs(t, err, errFailingRead)
				assert.Empty(t, ids, "no truncated DSN queued")
				return
			}
			require.NoError(t, err)
			require.Len(t, ids, 1)
			_, _, dm, err := h.sp.Load(ids[0])
			require.NoError(t, err)
			defer dm.Close()
			var b strings.Builder
			_, err = dm.WriteTo(&b)
			require.NoError(t, err)
			assert.Contains(t, b.String(), "Subject: hello")
			assert.NotContains(t, b.String(), "body line")
			require.NoError(t, h.sp.Delete(context.Background(), ids[0]))
		})
	}
}

// lockedBuffer is a bytes.Buffer for a logger written by several workers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPostQLogRule: a postq outcome is logged with the rule that decided
// it, and without a rule attribute (no rule="") when none did.
func TestPostQLogRule(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PostQ("later", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		return policy.Defer("4.7.0", "try later")
	})
	h := newHarness(t, "", Config{Chain: chain})
	var logs lockedBuffer
	h.sch.log = slog.New(slog.NewTextHandler(&logs, nil))
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	h.wait("m1")
	assert.Contains(t, logs.String(), `msg="queue: postq deferred" id=m1 stage=postq rule=later`)

	var none bytes.Buffer
	(&Scheduler{log: slog.New(slog.NewTextHandler(&none, nil))}).postqLog("m2", "").Info("outcome")
	assert.Contains(t, none.String(), "id=m2 stage=postq")
	assert.NotContains(t, none.String(), "rule")
}
