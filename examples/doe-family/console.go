package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin/console"
)

// checkConsoleFlags checks -console and -admins together.
func checkConsoleFlags(c *config) error {
	if c.console == "" {
		return nil
	}
	if c.users == "" {
		return errors.New("-console needs -users: the admins sign in with their password there")
	}
	if len(c.admins) == 0 {
		return errors.New("-console needs -admins: the accounts of -users that may sign in")
	}
	if _, _, err := net.SplitHostPort(c.console); err != nil {
		return fmt.Errorf("-console: %w", err)
	}
	return nil
}

// withActivity, when -console is set, makes the recorder of the console's
// overview and log: it reads the log lines of every component (the
// returned logger), and the SMTP server, the scheduler and the rules
// report to it (beside the metrics, when -metrics is set too).
func withActivity(cfg *config, log *slog.Logger) (*console.Activity, *slog.Logger) {
	if cfg.console == "" {
		return nil, log
	}
	a := &console.Activity{}
	return a, slog.New(a.LogHandler(log.Handler()))
}

// addEvents makes ev report to a too.
func (s *server) addEvents(a *console.Activity) {
	if a == nil {
		return
	}
	s.activity = a
	if s.mta.Events == nil {
		s.mta.Events = a
		return
	}
	s.mta.Events = fanout{s.mta.Events, a}
}

// fanout tells two receivers every event (the metrics and the console).
type fanout [2]interface {
	Connected(string, bool)
	Disconnected(string)
	TLSHandshake(string, error)
	AuthAttempted(string, int)
	MessageReceived(string, int, int64)
	DeliveryAttempted(string, policy.Reply, time.Duration)
	DSNQueued(string)
	SpoolCommitted(int)
	Observe(policy.Decision)
}

func (f fanout) Connected(l string, ok bool) {
	for _, e := range f {
		e.Connected(l, ok)
	}
}

func (f fanout) Disconnected(l string) {
	for _, e := range f {
		e.Disconnected(l)
	}
}

func (f fanout) TLSHandshake(l string, err error) {
	for _, e := range f {
		e.TLSHandshake(l, err)
	}
}

func (f fanout) AuthAttempted(l string, code int) {
	for _, e := range f {
		e.AuthAttempted(l, code)
	}
}

func (f fanout) MessageReceived(l string, code int, size int64) {
	for _, e := range f {
		e.MessageReceived(l, code, size)
	}
}

func (f fanout) DeliveryAttempted(t string, r policy.Reply, d time.Duration) {
	for _, e := range f {
		e.DeliveryAttempted(t, r, d)
	}
}

func (f fanout) DSNQueued(a string) {
	for _, e := range f {
		e.DSNQueued(a)
	}
}

func (f fanout) SpoolCommitted(n int) {
	for _, e := range f {
		e.SpoolCommitted(n)
	}
}

func (f fanout) Observe(d policy.Decision) {
	for _, e := range f {
		e.Observe(d)
	}
}

var _ queue.Events = fanout{}

// serveConsole serves the web console on -console: plain HTTP on a
// loopback address, HTTPS with the server's certificate on any other
// (the admins' passwords must not cross a network in clear).
func serveConsole(stdout io.Writer, s *server, log *slog.Logger) (stop func(), err error) {
	q := s.adminQueue()
	if q == nil {
		return nil, errors.New("-console: the queue store cannot be administered")
	}
	c, err := console.New(console.Config{Queue: q, Authenticator: s.creds, Admins: s.cfg.admins, Activity: s.activity, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := listen(stdout, log, "console", s.cfg.console)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if !isLoopback(ln.Addr()) {
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: s.certificate, MinVersion: tls.VersionTLS12})
		log.Info("console served over TLS (not a loopback address)", "addr", ln.Addr().String())
	}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("console listener stopped", "err", err)
		}
	}()
	return func() { hs.Close() }, nil
}

func isLoopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// splitList splits a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
