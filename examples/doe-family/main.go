// Command doe-family is the reference mail server of mtakit: the domain
// doe-family.com served with the hardening guide of vSMTP, written as Go
// rules.
//
//   - no open relay: from outside, mail is accepted only for local
//     recipients, or from clients authenticated as a local account; the
//     internal networks may send anywhere;
//   - SPF checked at MAIL for incoming mail (both identities, soft mode);
//     authenticated (roaming) users are not held to their SPF result;
//   - with -clamav, every message is delegated to clamsmtpd before it is
//     queued and quarantined in virus_q when it comes back infected;
//   - after queueing, mail from local senders is DKIM-signed, other mail is
//     verified, and the results are recorded in Authentication-Results;
//     DMARC is evaluated on incoming mail, and a message failing under
//     p=reject or p=quarantine is quarantined in "dmarc" (refusing after
//     the 250 would bounce to a likely forged sender);
//   - local recipients are delivered to <maildir>/<localpart>/new, all other
//     mail goes out through MX lookup or the -relayhost;
//   - the local recipients are the addresses of -users and the aliases of
//     -aliases ("alias@domain: target, target"): any other local part gets
//     550 5.1.1; "john+tag@" is john's; postmaster@ and abuse@ of every
//     -domain go to its first account; aliases are expanded before queueing;
//     accounts of a -domain other than the first are delivered to
//     <maildir>/<localpart>@<domain>; both files are reloaded when they
//     change. With neither file every local part is accepted (a WARN says
//     so at start);
//   - an authenticated user sends only as an address they own (their login,
//     an alias leading to them), in MAIL FROM and in the From field: 553
//     5.7.1 otherwise;
//   - a bare RCPT TO:<postmaster> (no domain, RFC 5321 section 4.5.1) is
//     postmaster@<first -domain> (see above for where it goes).
//
// Run it on its defaults (data under ./data, loopback ports, a self-signed
// certificate made at start):
//
//	go run ./examples/doe-family
//
// Operate its queue with "doe-family queue list|show|release|requeue|hold|
// delete|bounce|count" (see queuecmd.go), or in a browser: -console
// 127.0.0.1:8025 -admins john@doe-family.com serves the web console to the
// admins of -users (see console.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mtakit/mtakit/auth"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "doe-family:", err)
		os.Exit(1)
	}
}

// run starts the server with the given command line and serves until ctx
// ends, then shuts down gracefully. It reports where it listens on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "queue" {
		return queueCommand(ctx, args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if cfg.hashPassword != "" {
		hash, err := auth.HashPassword(cfg.hashPassword)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, hash)
		return nil
	}
	if cfg.dkimGenKey != "" {
		return genDKIMKey(cfg, stdout)
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	activity, log := withActivity(cfg, log) // console.go
	srv, err := build(cfg, log)
	if err != nil {
		return err
	}
	srv.addEvents(activity)
	if cfg.pprof != "" {
		stopProfiling, err := servePprof(stdout, cfg.pprof, log)
		if err != nil {
			return err
		}
		defer stopProfiling()
	}
	if cfg.metrics != "" {
		stopMetrics, err := serveMetrics(stdout, srv, log)
		if err != nil {
			srv.mta.Store.Close()
			srv.cluster.close()
			return err
		}
		defer stopMetrics()
	}
	if cfg.console != "" {
		stopConsole, err := serveConsole(stdout, srv, log)
		if err != nil {
			srv.mta.Store.Close()
			return err
		}
		defer stopConsole()
	}
	return srv.serve(ctx, stdout)
}

func newLogger(cfg *config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: want text or json, not %q", cfg.logFormat)
}

// listen opens addr and names what it is for in the output, and in the
// log unless log is nil (mtakit.Server logs its SMTP listeners itself).
func listen(stdout io.Writer, log *slog.Logger, what, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(stdout, "%s listening on %s\n", what, ln.Addr())
	if log != nil {
		log.Info("listening", slog.String("listener", what), slog.String("addr", ln.Addr().String()))
	}
	return ln, nil
}

// servePprof serves the runtime profiles of net/http/pprof on addr, which
// must be a loopback address: profiles reveal memory contents (message
// data among them) and must never face the network.
func servePprof(stdout io.Writer, addr string, log *slog.Logger) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("-pprof: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("-pprof: %q is not a loopback address", addr)
	}
	ln, err := listen(stdout, log, "pprof", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof listener stopped", "err", err)
		}
	}()
	return func() { hs.Close() }, nil
}

// shutdownTimeout bounds the graceful shutdown: sessions in DATA get this
// long to finish.
const shutdownTimeout = 30 * time.Second
