// Package metrics exports what a mail server built with mtakit does as
// Prometheus metrics: connections and sessions, TLS and AUTH, the verdicts
// and run times of the rules, messages accepted and refused, bytes
// received, queue lengths, delivery attempts and delays, DSNs, and the
// spool's commit rounds.
//
// The smtp and queue packages do not import it (nor Prometheus): they
// declare small event interfaces (smtp.Events, queue.Events) and the
// policy.Chain an Observer function, which a *Metrics satisfies:
//
//	m := metrics.New()
//	spool, err := queue.Open(dir, queue.SpoolConfig{Events: m})
//	...
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(m, metrics.QueueLengths(spool))
//	srv := &mtakit.Server{Chain: chain, Store: spool, Events: m, ...}
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Without mtakit.Server, set smtp.Config.Events, queue.Config.Events and
// chain.Observer = m.Observe yourself.
//
// # Metrics
//
// Every name starts with mtakit_. Labels take values from finite sets fixed
// by the configuration (listener, rule and transport names, verdict kinds,
// reply classes), never from what a client sends.
//
//	smtp_connections_total{listener}             TCP connections accepted
//	smtp_connections_refused_total{listener}     turned away before the greeting
//	smtp_sessions_total{listener}                sessions started (greeted)
//	smtp_sessions_active{listener}               sessions open now (gauge)
//	smtp_tls_handshakes_total{listener,result}   success, failure
//	smtp_auth_total{listener,result}             success, failure, temporary
//	smtp_messages_total{listener,class}          reply to DATA: 2xx, 4xx, 5xx
//	smtp_received_bytes_total{listener}          message bytes received
//	policy_verdicts_total{stage,rule,verdict}    next, accept, force_accept, deny,
//	                                             quarantine, info, fail
//	policy_rule_duration_seconds{stage,rule}     histogram
//	queue_messages{queue}                        queue lengths (QueueLengths)
//	queue_delivery_attempts_total{transport,outcome}  per recipient: delivered,
//	                                             deferred, failed
//	queue_delivery_delay_seconds{transport}      arrival to delivery, histogram
//	queue_dsn_total{action}                      failed, delayed, delivered
//	queue_commit_ops                             changes per spool commit round,
//	                                             histogram (_count: the rounds)
//
// # Configuration and logging
//
// A Metrics has nothing to configure: New makes it, and it logs nothing.
// QueueLengths takes the storage to count. The buckets of the histograms
// are fixed (rules: 100 µs to 30 s; delivery delay: 100 ms to 5 days;
// commit rounds: 1 to 1024 changes).
package metrics
