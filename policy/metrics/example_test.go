package metrics_test

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/metrics"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// One Metrics for a whole server: the spool (commit rounds), the
// mtakit.Server (SMTP, scheduler and rules), and the queue lengths, served
// on /metrics.
func Example() {
	m := metrics.New()
	spool, err := queue.Open(os.Getenv("SPOOL"), queue.SpoolConfig{Events: m})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, metrics.QueueLengths(spool))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	go http.ListenAndServe("127.0.0.1:9025", nil)

	srv := &mtakit.Server{
		Chain:  policy.NewChain(),
		Store:  spool,
		Events: m,
		SMTP:   smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Addr: ":25", Role: smtp.RoleMTA}}},
	}
	log.Fatal(srv.Run(context.Background()))
}

// Without mtakit.Server, each part is given the Metrics.
func Example_parts() {
	m := metrics.New()
	chain := policy.NewChain()
	chain.Observer = m.Observe
	spool, err := queue.Open(os.Getenv("SPOOL"), queue.SpoolConfig{Events: m})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := smtp.NewServer(smtp.Config{Chain: chain, Queue: spool, Events: m})
	if err != nil {
		log.Fatal(err)
	}
	sched := queue.NewScheduler(spool, queue.Config{Chain: chain, Events: m})
	prometheus.MustRegister(m, metrics.QueueLengths(spool))
	_, _ = srv, sched
}
