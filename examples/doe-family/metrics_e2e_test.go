package main

import (
	"bufio"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrapeMetrics gets url over HTTP and returns its samples by name{labels}
// as written (labels sorted by name).
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
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

var metricsAddr = regexp.MustCompile(`metrics listening on (\S+)`)

// TestMetricsE2E: the running binary, started with -metrics, serves
// /metrics; after an accepted, a refused and a deferred message (then
// delivered on retry) the counters say so.
func TestMetricsE2E(t *testing.T) {
	e := newEnv(t, "-metrics", "127.0.0.1:0")
	mm := metricsAddr.FindStringSubmatch(e.stdout.String())
	require.NotNil(t, mm, "no metrics listener in:\n%s", e.stdout)
	url := "http://" + mm[1] + "/metrics"

	// Accepted on the MTA port, delivered to the maildir.
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
		message("someone@example.org", "jane@doe-family.com", "metrics-in", "x")))
	waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
	// Refused after DATA: john may not write as jane.
	err := send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"},
		message("jane@doe-family.com", "friend@other.test", "metrics-as-jane", "x"))
	code, _ := smtpCode(t, err)
	require.Equal(t, 553, code)
	// Accepted, deferred once by the relayhost, delivered on retry.
	e.sink.fail.Store(1)
	require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"},
		message("john@doe-family.com", "friend@other.test", "metrics-out", "x")))
	waitSink(t, e.sink, 1)

	var got map[string]float64
	waitFor(t, 20*time.Second, "the queue to empty and the sessions to end", func() bool {
		got = scrapeMetrics(t, url)
		return got[`mtakit_queue_messages{queue="deferred"}`] == 0 && got[`mtakit_queue_messages{queue="deliver"}`] == 0 &&
			got[`mtakit_smtp_sessions_active{listener="mta"}`] == 0 && got[`mtakit_smtp_sessions_active{listener="submission"}`] == 0
	})
	for name, want := range map[string]float64{
		`mtakit_smtp_connections_total{listener="mta"}`:                            1,
		`mtakit_smtp_sessions_total{listener="mta"}`:                               1,
		`mtakit_smtp_sessions_total{listener="submission"}`:                        2,
		`mtakit_smtp_tls_handshakes_total{listener="submission",result="success"}`: 2,
		`mtakit_smtp_tls_handshakes_total{listener="submission",result="failure"}`: 0,
		`mtakit_smtp_auth_total{listener="submission",result="success"}`:           2,
		`mtakit_smtp_auth_total{listener="submission",result="failure"}`:           0,
		`mtakit_smtp_messages_total{class="2xx",listener="mta"}`:                   1,
		`mtakit_smtp_messages_total{class="2xx",listener="submission"}`:            1,
		`mtakit_smtp_messages_total{class="5xx",listener="submission"}`:            1,
		`mtakit_smtp_messages_total{class="4xx",listener="submission"}`:            0,

		`mtakit_policy_verdicts_total{rule="from-login",stage="preq",verdict="deny"}`: 1,
		`mtakit_policy_verdicts_total{rule="from-login",stage="preq",verdict="next"}`: 2,
		`mtakit_policy_rule_duration_seconds_count{rule="spf",stage="mail"}`:          3,

		`mtakit_queue_delivery_attempts_total{outcome="delivered",transport="maildir"}`: 1,
		`mtakit_queue_delivery_attempts_total{outcome="deferred",transport="smtp"}`:     1,
		`mtakit_queue_delivery_attempts_total{outcome="delivered",transport="smtp"}`:    1,
		`mtakit_queue_delivery_delay_seconds_count{transport="smtp"}`:                   1,
		`mtakit_queue_messages{queue="deferred"}`:                                       0,
		`mtakit_queue_messages{queue="dead"}`:                                           0,
	} {
		v, ok := got[name]
		if assert.True(t, ok, "%s missing", name) {
			assert.Equal(t, want, v, name)
		}
	}
	// Bytes: the three messages, at least their text.
	assert.Greater(t, got[`mtakit_smtp_received_bytes_total{listener="submission"}`], 2*float64(len(message("john@doe-family.com", "friend@other.test", "metrics-out", "x"))))
	// The retry came -retry-min (1 s, ±10%) after the first attempt.
	assert.GreaterOrEqual(t, got[`mtakit_queue_delivery_delay_seconds_sum{transport="smtp"}`], 0.9)
	assert.GreaterOrEqual(t, got[`mtakit_queue_commit_ops_sum`], 2.0, "the two enqueues at least")
	assert.Contains(t, got, "go_goroutines", "the Go runtime's metrics too")
}

// TestMetricsOff: without -metrics nothing listens for them.
func TestMetricsOff(t *testing.T) {
	e := newEnv(t)
	assert.NotContains(t, e.stdout.String(), "metrics listening")
}
