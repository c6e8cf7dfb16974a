package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mtakit/mtakit/policy"
)

// Metrics counts what a mail server does. Make one with New, register it on
// a prometheus.Registerer (it is a prometheus.Collector), and give it to
// what it counts:
//
//   - smtp.Config.Events: connections, sessions, TLS, AUTH, messages;
//   - policy.Chain.Observer, as Observe: the verdicts and run times of
//     the rules;
//   - queue.Config.Events: delivery attempts, delays, DSNs;
//   - queue.SpoolConfig.Events: the spool's commit rounds.
//
// (mtakit.Server.Events does the first three.) The queue lengths are
// another collector, QueueLengths, read at each scrape.
//
// A Metrics is safe for concurrent use. Counting costs a few atomic
// additions and no allocation: the series of each listener, rule and
// transport are looked up once, then kept in a map read without a lock.
type Metrics struct {
	connections, refused, sessions, tls, auth, messages, received *prometheus.CounterVec
	active                                                        *prometheus.GaugeVec
	verdicts                                                      *prometheus.CounterVec
	ruleSeconds                                                   *prometheus.HistogramVec
	attempts, dsns                                                *prometheus.CounterVec
	delay                                                         *prometheus.HistogramVec
	commitOps                                                     prometheus.Histogram

	listeners  cache[string, *listenerSeries]
	rules      cache[string, *ruleSeries]
	ruleStages cache[stageRule, *ruleSeries]
	transports cache[string, *transportSeries]
	dsnActions cache[string, prometheus.Counter]

	all []prometheus.Collector
}

// Buckets of the histograms, in seconds (ops for the commit rounds).
var (
	ruleBuckets   = []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30}
	delayBuckets  = []float64{.1, .5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600}
	commitBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
)

// New returns a Metrics with every metric at zero. The series of a
// listener, rule or transport appear at its first event.
func New() *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mtakit", Name: name, Help: help}, labels)
	}
	m := &Metrics{
		connections: counter("smtp_connections_total", "TCP connections accepted, per listener.", "listener"),
		refused:     counter("smtp_connections_refused_total", "Connections turned away before the greeting (limits, connect rules, failed implicit TLS), per listener.", "listener"),
		sessions:    counter("smtp_sessions_total", "SMTP sessions started (the client got the greeting), per listener.", "listener"),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "mtakit", Name: "smtp_sessions_active",
			Help: "SMTP sessions open now, per listener."}, []string{"listener"}),
		tls:      counter("smtp_tls_handshakes_total", "TLS handshakes (STARTTLS and implicit TLS) by result: success or failure.", "listener", "result"),
		auth:     counter("smtp_auth_total", "AUTH attempts by result: success, failure (refused) or temporary (4xx).", "listener", "result"),
		messages: counter("smtp_messages_total", "Messages answered after DATA/BDAT, by reply class: 2xx queued, 4xx and 5xx refused.", "listener", "class"),
		received: counter("smtp_received_bytes_total", "Bytes of message data received, refused messages included.", "listener"),
		verdicts: counter("policy_verdicts_total", "Verdicts of the rules, per stage, rule and verdict kind (fail: the rule failed or panicked).", "stage", "rule", "verdict"),
		ruleSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "mtakit", Name: "policy_rule_duration_seconds",
			Help: "Time a rule took to decide, per stage and rule.", Buckets: ruleBuckets}, []string{"stage", "rule"}),
		attempts: counter("queue_delivery_attempts_total", "Delivery attempts per recipient, by transport and outcome: delivered (2xx), deferred (4xx), failed (5xx).", "transport", "outcome"),
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "mtakit", Name: "queue_delivery_delay_seconds",
			Help: "Time from a message's arrival in the queue to its delivery, per delivered recipient, by transport.", Buckets: delayBuckets}, []string{"transport"}),
		dsns: counter("queue_dsn_total", "Delivery status notifications queued, by action: failed, delayed, delivered.", "action"),
		commitOps: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "mtakit", Name: "queue_commit_ops",
			Help: "Changes made durable per commit round of the spool (group commit); its count is the number of rounds.", Buckets: commitBuckets}),
	}
	m.all = []prometheus.Collector{m.connections, m.refused, m.sessions, m.active, m.tls, m.auth, m.messages, m.received,
		m.verdicts, m.ruleSeconds, m.attempts, m.delay, m.dsns, m.commitOps}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all {
		c.Collect(ch)
	}
}

// listenerSeries holds the series of one listener.
type listenerSeries struct {
	connections, refused, sessions prometheus.Counter
	active                         prometheus.Gauge
	tlsOK, tlsFailed               prometheus.Counter
	authOK, authFailed, authTemp   prometheus.Counter
	class                          [6]prometheus.Counter // by the first digit of the reply; 2, 4 and 5 set
	received                       prometheus.Counter
}

func (m *Metrics) listener(name string) *listenerSeries {
	return m.listeners.get(name, func() *listenerSeries {
		return &listenerSeries{
			connections: m.connections.WithLabelValues(name),
			refused:     m.refused.WithLabelValues(name),
			sessions:    m.sessions.WithLabelValues(name),
			active:      m.active.WithLabelValues(name),
			tlsOK:       m.tls.WithLabelValues(name, "success"),
			tlsFailed:   m.tls.WithLabelValues(name, "failure"),
			authOK:      m.auth.WithLabelValues(name, "success"),
			authFailed:  m.auth.WithLabelValues(name, "failure"),
			authTemp:    m.auth.WithLabelValues(name, "temporary"),
			class: [6]prometheus.Counter{
				2: m.messages.WithLabelValues(name, "2xx"),
				4: m.messages.WithLabelValues(name, "4xx"),
				5: m.messages.WithLabelValues(name, "5xx"),
			},
			received: m.received.WithLabelValues(name),
		}
	})
}

// Connected implements smtp.Events.
func (m *Metrics) Connected(listener string, admitted bool) {
	l := m.listener(listener)
	l.connections.Inc()
	if !admitted {
		l.refused.Inc()
		return
	}
	l.sessions.Inc()
	l.active.Inc()
}

// Disconnected implements smtp.Events.
func (m *Metrics) Disconnected(listener string) { m.listener(listener).active.Dec() }

// TLSHandshake implements smtp.Events.
func (m *Metrics) TLSHandshake(listener string, err error) {
	l := m.listener(listener)
	if err != nil {
		l.tlsFailed.Inc()
		return
	}
	l.tlsOK.Inc()
}

// AuthAttempted implements smtp.Events.
func (m *Metrics) AuthAttempted(listener string, code int) {
	l := m.listener(listener)
	switch code / 100 {
	case 2:
		l.authOK.Inc()
	case 4:
		l.authTemp.Inc()
	default:
		l.authFailed.Inc()
	}
}

// MessageReceived implements smtp.Events.
func (m *Metrics) MessageReceived(listener string, code int, size int64) {
	l := m.listener(listener)
	if c := code / 100; c >= 0 && c < len(l.class) && l.class[c] != nil {
		l.class[c].Inc()
	}
	l.received.Add(float64(size))
}

// ruleSeries holds the series of one rule: its run times, and a counter
// per verdict, made at the rule's first verdict of that kind.
type ruleSeries struct {
	stage    policy.Stage
	stageL   string
	rule     string
	duration prometheus.Observer
	mu       sync.Mutex // serialises making counters
	verdicts [len(verdictLabels)]atomic.Pointer[prometheus.Counter]
}

// verdictLabels are the values of the verdict label: the kinds, then
// "fail" for the verdict of a rule that failed (policy.Fail, a panic, a
// malformed verdict).
var verdictLabels = [...]string{
	policy.KindNext: "next", policy.KindAccept: "accept", policy.KindForceAccept: "force_accept",
	policy.KindDeny: "deny", policy.KindQuarantine: "quarantine", policy.KindInfo: "info",
	policy.KindInfo + 1: "fail",
}

const verdictFail = int(policy.KindInfo) + 1

// verdictIndex is the index of v's label in verdictLabels.
func verdictIndex(v policy.Verdict) int {
	if v.Kind == policy.KindDeny && v.Err != nil || int(v.Kind) >= verdictFail {
		return verdictFail
	}
	return int(v.Kind)
}

// counter returns the counter of verdict i, making it the first time.
func (r *ruleSeries) counter(m *Metrics, i int) prometheus.Counter {
	if c := r.verdicts[i].Load(); c != nil {
		return *c
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.verdicts[i].Load(); c != nil {
		return *c
	}
	c := m.verdicts.WithLabelValues(r.stageL, r.rule, verdictLabels[i])
	r.verdicts[i].Store(&c)
	return c
}

// stageRule names a rule of a stage: the key of the rules met again
// under another stage (several chains sharing a Metrics).
type stageRule struct {
	stage policy.Stage
	rule  string
}

func (m *Metrics) newRule(stage policy.Stage, rule string) *ruleSeries {
	sl := stage.String()
	return &ruleSeries{stage: stage, stageL: sl, rule: rule, duration: m.ruleSeconds.WithLabelValues(sl, rule)}
}

// Observe counts one rule's decision; set it as policy.Chain.Observer
// (calling any observer that was there before too).
func (m *Metrics) Observe(d policy.Decision) {
	// A chain's rule names are unique across its stages: the name alone
	// finds the series (a string key hashes fastest).
	r := m.rules.get(d.Rule, func() *ruleSeries { return m.newRule(d.Stage, d.Rule) })
	if r.stage != d.Stage {
		r = m.ruleStages.get(stageRule{d.Stage, d.Rule}, func() *ruleSeries { return m.newRule(d.Stage, d.Rule) })
	}
	r.counter(m, verdictIndex(d.Verdict)).Inc()
	r.duration.Observe(d.Duration.Seconds())
}

type transportSeries struct {
	delivered, deferred, failed prometheus.Counter
	delay                       prometheus.Observer
}

// DeliveryAttempted implements queue.Events.
func (m *Metrics) DeliveryAttempted(transport string, reply policy.Reply, sinceArrival time.Duration) {
	t := m.transports.get(transport, func() *transportSeries {
		return &transportSeries{
			delivered: m.attempts.WithLabelValues(transport, "delivered"),
			deferred:  m.attempts.WithLabelValues(transport, "deferred"),
			failed:    m.attempts.WithLabelValues(transport, "failed"),
			delay:     m.delay.WithLabelValues(transport),
		}
	})
	switch {
	case reply.Code >= 200 && reply.Code < 300:
		t.delivered.Inc()
		t.delay.Observe(sinceArrival.Seconds())
	case reply.Permanent():
		t.failed.Inc()
	default:
		t.deferred.Inc()
	}
}

// DSNQueued implements queue.Events.
func (m *Metrics) DSNQueued(action string) {
	m.dsnActions.get(action, func() prometheus.Counter { return m.dsns.WithLabelValues(action) }).Inc()
}

// SpoolCommitted implements queue.Events.
func (m *Metrics) SpoolCommitted(ops int) { m.commitOps.Observe(float64(ops)) }

// cache maps keys (listener, rule, transport names: a finite set, fixed
// by the configuration) to their series. Reads take no lock: the map is
// never changed once published, a new key publishes a copy.
type cache[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex // serialises the copies
}

// get returns the value of k, made by mk the first time.
func (c *cache[K, V]) get(k K, mk func() V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	n := make(map[K]V, 1)
	if old != nil {
		n = make(map[K]V, len(*old)+1)
		for k, v := range *old {
			n[k] = v
		}
	}
	v := mk()
	n[k] = v
	c.m.Store(&n)
	return v
}
