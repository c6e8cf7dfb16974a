package main

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mtakit/mtakit/policy/metrics"
	"github.com/mtakit/mtakit/queue"
)

// withMetrics, when -metrics is set, makes the server's metrics: the SMTP
// server, the scheduler and the rules report to them (mtakit.Server.Events),
// and so does the spool opened with the returned configuration (its commit
// rounds).
func (s *server) withMetrics(sc queue.SpoolConfig) queue.SpoolConfig {
	if s.cfg.metrics == "" {
		return sc
	}
	s.metrics = metrics.New()
	s.mta.Events = s.metrics
	sc.Events = s.metrics
	return sc
}

// serveMetrics serves /metrics on -metrics: the server's metrics, the
// queue lengths (counted at each scrape), and the Go runtime's and the
// process's.
func serveMetrics(stdout io.Writer, s *server, log *slog.Logger) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.metrics, metrics.QueueLengths(s.mta.Store),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := listen(stdout, log, "metrics", s.cfg.metrics)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener stopped", "err", err)
		}
	}()
	return func() { hs.Close() }, nil
}
