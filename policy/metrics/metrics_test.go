package metrics_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/metrics"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// The event interfaces are satisfied.
var (
	_ smtp.Events   = (*metrics.Metrics)(nil)
	_ queue.Events  = (*metrics.Metrics)(nil)
	_ mtakit.Events = (*metrics.Metrics)(nil)
)

// signalling is the Metrics, telling the test when deliveries and
// disconnections were counted, so that it waits on events, not time.
type signalling struct {
	*metrics.Metrics
	attempts, gone chan struct{}
}

func (s signalling) DeliveryAttempted(tr string, r policy.Reply, d time.Duration) {
	s.Metrics.DeliveryAttempted(tr, r, d)
	s.attempts <- struct{}{}
}

func (s signalling) Disconnected(l string) {
	s.Metrics.Disconnected(l)
	s.gone <- struct{}{}
}

func wait(t *testing.T, ch chan struct{}, n int, what string) {
	t.Helper()
	for range n {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("waiting for %s", what)
		}
	}
}

// scrape gets /metrics over HTTP and returns the samples by their
// name{labels} as written (labels sorted by name).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		out[line[:i]] = v
	}
	require.NoError(t, sc.Err())
	return out
}

func count(t *testing.T, st queue.Store, q string) int {
	ids, err := st.IDs(q)
	require.NoError(t, err)
	return len(ids)
}

// TestScrape runs a whole server with metrics, sends it an accepted, a
// refused and a deferred message (and one that bounces), and checks what
// /metrics says over HTTP.
func TestScrape(t *testing.T) {
	m := metrics.New()
	ev := signalling{Metrics: m, attempts: make(chan struct{}, 100), gone: make(chan struct{}, 100)}
	spool, err := queue.Open(t.TempDir(), queue.SpoolConfig{Events: m})
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, metrics.QueueLengths(spool))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()

	chain := (&policy.Chain{}).
		Rcpt("local", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
			if r.Addr.Domain == "mx.test" {
				return policy.Accept()
			}
			return policy.Next()
		}).
		PreQ("content", func(_ context.Context, _ *policy.Transaction, msg *policy.Message) policy.Verdict {
			if msg.Header.Get("Subject") == "spam" {
				return policy.Deny(554, "5.7.1", "Content refused")
			}
			return policy.Next()
		})
	out := queue.TransportFunc(func(_ context.Context, d *policy.Delivery) []policy.Reply {
		replies := make([]policy.Reply, len(d.Rcpts))
		for i, r := range d.Rcpts {
			switch r.Addr.Local {
			case "later":
				replies[i] = policy.Reply{Code: 451, Enhanced: "4.2.0", Text: "Mailbox busy"}
			case "bounce":
				replies[i] = policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}
			default:
				replies[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
			}
		}
		return replies
	})
	srv := &mtakit.Server{
		Hostname: "mx.test", Chain: chain, Store: spool, Events: ev,
		SMTP: smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}, SpoolDir: t.TempDir()},
		Delivery: queue.Config{Transports: map[string]queue.Transport{"out": out}, DefaultRoute: policy.Route{Transport: "out"},
			MinBackoff: time.Hour, DelayWarning: -1},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, []net.Listener{ln}) }()
	defer func() { cancel(); <-done }()

	c, err := gosmtp.Dial(ln.Addr().String())
	require.NoError(t, err)
	require.NoError(t, c.Hello("client.test"))
	size := 0
	send := func(to, subject string) error {
		body := "From: <a@client.test>\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
		size += len(body)
		require.NoError(t, c.Mail("a@client.test", nil))
		require.NoError(t, c.Rcpt(to, nil))
		w, err := c.Data()
		require.NoError(t, err)
		io.WriteString(w, body)
		return w.Close()
	}
	require.NoError(t, send("ok@mx.test", "accepted"))
	require.Error(t, send("ok@mx.test", "spam"))
	require.NoError(t, send("later@mx.test", "deferred"))
	require.NoError(t, send("bounce@mx.test", "bounced"))
	require.NoError(t, c.Mail("a@client.test", nil))
	require.Error(t, c.Rcpt("someone@elsewhere.test", nil), "no relay")
	require.NoError(t, c.Quit())
	wait(t, ev.gone, 1, "the end of the session")
	// ok, later, bounce, and the DSN of bounce to a@client.test.
	wait(t, ev.attempts, 4, "the delivery attempts")
	// The outcomes are recorded after the attempts: wait for the moves.
	deadline := time.Now().Add(10 * time.Second)
	for !(count(t, spool, queue.Deferred) == 1 && count(t, spool, queue.Dead) == 1 &&
		count(t, spool, queue.Working) == 0 && count(t, spool, queue.Deliver) == 0) {
		require.True(t, time.Now().Before(deadline), "the queue did not settle")
		time.Sleep(5 * time.Millisecond)
	}

	got := scrape(t, hs.URL)
	for name, want := range map[string]float64{
		`mtakit_smtp_connections_total{listener="mta"}`:                     1,
		`mtakit_smtp_connections_refused_total{listener="mta"}`:             0,
		`mtakit_smtp_sessions_total{listener="mta"}`:                        1,
		`mtakit_smtp_sessions_active{listener="mta"}`:                       0,
		`mtakit_smtp_messages_total{class="2xx",listener="mta"}`:            3,
		`mtakit_smtp_messages_total{class="4xx",listener="mta"}`:            0,
		`mtakit_smtp_messages_total{class="5xx",listener="mta"}`:            1,
		`mtakit_smtp_received_bytes_total{listener="mta"}`:                  float64(size),
		`mtakit_smtp_tls_handshakes_total{listener="mta",result="success"}`: 0,
		`mtakit_smtp_auth_total{listener="mta",result="failure"}`:           0,

		`mtakit_policy_verdicts_total{rule="local",stage="rcpt",verdict="accept"}`:        4,
		`mtakit_policy_verdicts_total{rule="local",stage="rcpt",verdict="next"}`:          1,
		`mtakit_policy_verdicts_total{rule="content",stage="preq",verdict="next"}`:        3,
		`mtakit_policy_verdicts_total{rule="content",stage="preq",verdict="deny"}`:        1,
		`mtakit_policy_rule_duration_seconds_count{rule="content",stage="preq"}`:          4,
		`mtakit_policy_rule_duration_seconds_count{rule="local",stage="rcpt"}`:            5,
		`mtakit_policy_rule_duration_seconds_bucket{rule="local",stage="rcpt",le="+Inf"}`: 5,

		`mtakit_queue_delivery_attempts_total{outcome="delivered",transport="out"}`: 2,
		`mtakit_queue_delivery_attempts_total{outcome="deferred",transport="out"}`:  1,
		`mtakit_queue_delivery_attempts_total{outcome="failed",transport="out"}`:    1,
		`mtakit_queue_delivery_delay_seconds_count{transport="out"}`:                2,
		`mtakit_queue_dsn_total{action="failed"}`:                                   1,

		`mtakit_queue_messages{queue="deferred"}`: 1,
		`mtakit_queue_messages{queue="dead"}`:     1,
		`mtakit_queue_messages{queue="working"}`:  0,
		`mtakit_queue_messages{queue="deliver"}`:  0,
	} {
		v, ok := got[name]
		if assert.True(t, ok, "%s missing", name) {
			assert.Equal(t, want, v, name)
		}
	}
	// Three enqueues and the DSN, at least, in one round or more.
	assert.GreaterOrEqual(t, got[`mtakit_queue_commit_ops_sum`], 4.0)
	assert.GreaterOrEqual(t, got[`mtakit_queue_commit_ops_count`], 1.0)
	assert.LessOrEqual(t, got[`mtakit_queue_commit_ops_count`], got[`mtakit_queue_commit_ops_sum`])
}

// TestEvents checks how each event is counted, calling the methods as the
// hooks do.
func TestEvents(t *testing.T) {
	m := metrics.New()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()

	m.Connected("sub", true)
	m.Connected("sub", true)
	m.Connected("sub", false)
	m.Disconnected("sub")
	m.TLSHandshake("sub", nil)
	m.TLSHandshake("sub", io.ErrUnexpectedEOF)
	for _, code := range []int{235, 535, 501, 454, 421} {
		m.AuthAttempted("sub", code)
	}
	m.MessageReceived("sub", 250, 100)
	m.MessageReceived("sub", 421, 7)
	m.MessageReceived("sub", 552, 1000)
	m.Observe(policy.Decision{Stage: policy.StageMail, Rule: "spf", Verdict: policy.Fail(io.EOF), Duration: 2 * time.Millisecond})
	m.Observe(policy.Decision{Stage: policy.StageMail, Rule: "spf", Verdict: policy.Defer("4.7.0", "later"), Duration: time.Millisecond})
	m.Observe(policy.Decision{Stage: policy.StagePostQ, Rule: "av", Verdict: policy.Quarantine("virus"), Duration: time.Second})
	// Two chains sharing the Metrics, with a rule name in two stages.
	m.Observe(policy.Decision{Stage: policy.StageRcpt, Rule: "spf", Verdict: policy.Accept()})
	m.DeliveryAttempted("lmtp", policy.Reply{Code: 250}, 3*time.Second)
	m.DeliveryAttempted("lmtp", policy.Reply{Code: 421}, time.Hour)
	m.DSNQueued("delayed")
	m.DSNQueued("delayed")
	m.SpoolCommitted(3)
	m.SpoolCommitted(5)

	got := scrape(t, hs.URL)
	for name, want := range map[string]float64{
		`mtakit_smtp_connections_total{listener="sub"}`:                                  3,
		`mtakit_smtp_connections_refused_total{listener="sub"}`:                          1,
		`mtakit_smtp_sessions_total{listener="sub"}`:                                     2,
		`mtakit_smtp_sessions_active{listener="sub"}`:                                    1,
		`mtakit_smtp_tls_handshakes_total{listener="sub",result="success"}`:              1,
		`mtakit_smtp_tls_handshakes_total{listener="sub",result="failure"}`:              1,
		`mtakit_smtp_auth_total{listener="sub",result="success"}`:                        1,
		`mtakit_smtp_auth_total{listener="sub",result="failure"}`:                        2,
		`mtakit_smtp_auth_total{listener="sub",result="temporary"}`:                      2,
		`mtakit_smtp_messages_total{class="2xx",listener="sub"}`:                         1,
		`mtakit_smtp_messages_total{class="4xx",listener="sub"}`:                         1,
		`mtakit_smtp_messages_total{class="5xx",listener="sub"}`:                         1,
		`mtakit_smtp_received_bytes_total{listener="sub"}`:                               1107,
		`mtakit_policy_verdicts_total{rule="spf",stage="mail",verdict="fail"}`:           1,
		`mtakit_policy_verdicts_total{rule="spf",stage="mail",verdict="deny"}`:           1,
		`mtakit_policy_verdicts_total{rule="av",stage="postq",verdict="quarantine"}`:     1,
		`mtakit_policy_rule_duration_seconds_sum{rule="spf",stage="mail"}`:               0.003,
		`mtakit_policy_rule_duration_seconds_bucket{rule="spf",stage="mail",le="0.001"}`: 1,
		`mtakit_policy_rule_duration_seconds_bucket{rule="spf",stage="mail",le="0.005"}`: 2,
		`mtakit_queue_delivery_attempts_total{outcome="delivered",transport="lmtp"}`:     1,
		`mtakit_queue_delivery_attempts_total{outcome="deferred",transport="lmtp"}`:      1,
		`mtakit_queue_delivery_delay_seconds_sum{transport="lmtp"}`:                      3,
		`mtakit_queue_dsn_total{action="delayed"}`:                                       2,
		`mtakit_queue_commit_ops_count`:                                                  2,
		`mtakit_queue_commit_ops_sum`:                                                    8,
		`mtakit_queue_commit_ops_bucket{le="4"}`:                                         1,
	} {
		v, ok := got[name]
		if assert.True(t, ok, "%s missing", name) {
			assert.InDelta(t, want, v, 1e-9, name)
		}
	}
}

// TestNoAllocations: counting allocates nothing once a series exists.
func TestNoAllocations(t *testing.T) {
	m := metrics.New()
	d := policy.Decision{Stage: policy.StageRcpt, Rule: "relay", Verdict: policy.Accept(), Duration: time.Microsecond}
	ok := policy.Reply{Code: 250}
	m.Observe(d)
	m.Connected("mta", true)
	m.DeliveryAttempted("smtp", ok, time.Second)
	m.DSNQueued("failed")
	allocs := testing.AllocsPerRun(100, func() {
		m.Connected("mta", true)
		m.Observe(d)
		m.MessageReceived("mta", 250, 4096)
		m.AuthAttempted("mta", 235)
		m.TLSHandshake("mta", nil)
		m.Disconnected("mta")
		m.DeliveryAttempted("smtp", ok, time.Second)
		m.DSNQueued("failed")
		m.SpoolCommitted(4)
	})
	assert.Zero(t, allocs)
}

// BenchmarkPerMessage measures what counting costs for one message as
// doe-family handles it: a session's events, the decisions of 14 rules,
// the message, a delivery and a share of a commit round; serially and
// from every CPU at once (the counters are shared).
func BenchmarkPerMessage(b *testing.B) {
	m := metrics.New()
	stages := []policy.Stage{policy.StageConnect, policy.StageHelo, policy.StageMail, policy.StageMail, policy.StageMail,
		policy.StageRcpt, policy.StageRcpt, policy.StageRcpt, policy.StagePreQ, policy.StagePreQ,
		policy.StagePostQ, policy.StagePostQ, policy.StageDelivery, policy.StageDelivery}
	var ds []policy.Decision
	for i, s := range stages {
		ds = append(ds, policy.Decision{Stage: s, Rule: "rule" + strconv.Itoa(i), Verdict: policy.Next(), Duration: time.Duration(i) * time.Microsecond})
	}
	ok := policy.Reply{Code: 250}
	one := func() {
		m.Connected("mta", true)
		for _, d := range ds {
			m.Observe(d)
		}
		m.MessageReceived("mta", 250, 4096)
		m.DeliveryAttempted("maildir", ok, 3*time.Millisecond)
		m.SpoolCommitted(4)
		m.Disconnected("mta")
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			one()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				one()
			}
		})
	})
}
