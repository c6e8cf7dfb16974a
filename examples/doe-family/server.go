package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/delegate"
	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/dnscache"
	"github.com/mtakit/mtakit/policy/metrics"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin/console"
	"github.com/mtakit/mtakit/queue/journal"
	"github.com/mtakit/mtakit/relay"
	"github.com/mtakit/mtakit/smtp"
)

// server is doe-family put together: the mail server (SMTP, queue and
// scheduler) and the antivirus receiver.
type server struct {
	cfg       *config
	log       *slog.Logger
	mta       *mtakit.Server
	antivirus *delegate.Service
	creds     *auth.CredentialFile
	rcpts     *relay.RecipientTable
	abuse     *abuse
	cert      atomic.Pointer[smtp.CertReloader] // the TLS certificate; SIGHUP swaps it (reload.go)
	dkim      *dkimKey                          // nil: no signing
	reloaded  reloadState
	metrics   *metrics.Metrics  // with -metrics (see metrics.go)
	milters   []*milter.Milter  // with -milter (see rules_milter.go)
	activity  *console.Activity // with -console (see console.go)
	cluster   *cluster          // -queue nats://... or -nats-embedded (cluster.go); nil: the filesystem spool or journal
}

func build(cfg *config, log *slog.Logger) (_ *server, err error) {
	internal, err := relay.ParsePrefixes(cfg.internal)
	if err != nil {
		return nil, fmt.Errorf("-internal: %w", err)
	}
	if len(cfg.domains) == 0 {
		return nil, errors.New("-domain: at least one local domain is needed")
	}
	var dnsServers []string // none: those of /etc/resolv.conf
	if cfg.dns != "" {
		dnsServers = []string{cfg.dns}
	}
	resolver := dnscache.New(dnscache.Config{Servers: dnsServers, Logger: log})
	s := &server{cfg: cfg, log: log}

	rs := ruleSet{domains: cfg.domains, internal: internal, resolver: resolver, hostname: cfg.hostname}
	if s.rcpts, err = loadRecipients(cfg, log); err != nil {
		return nil, err
	}
	rs.rcpts = s.rcpts
	if s.cluster, err = connectCluster(cfg, log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.cluster.close()
		}
	}()
	if rs.abuse, err = newAbuse(cfg, internal, resolver, s.cluster, log); err != nil {
		return nil, err
	}
	s.abuse = rs.abuse
	if cfg.dkimKey != "" {
		if s.dkim, err = newDKIMKey(cfg); err != nil {
			return nil, fmt.Errorf("-dkim-key: %w", err)
		}
		rs.dkim = s.dkim
	}
	if cfg.clamav != "" {
		// MaxConcurrent stays below clamsmtpd's MaxConnections, above which
		// it answers 421: more delegations wait for a free slot.
		s.antivirus = &delegate.Service{Name: "clamsmtpd", Filter: cfg.clamav, Receiver: cfg.receiver,
			Hostname: cfg.hostname, MaxConcurrent: 10, Logger: log}
		rs.antivirus = s.antivirus
	}
	if s.milters, err = newMilters(cfg, log); err != nil {
		return nil, err
	}
	rs.milters = s.milters
	chain := rs.chain(log)

	var outbound queue.Transport = &relay.MX{Resolver: resolver, Hostname: cfg.hostname, Logger: log}
	if cfg.relayhost != "" {
		outbound = &relay.Smarthost{Addr: cfg.relayhost, Hostname: cfg.hostname, Logger: log}
	}
	s.mta = &mtakit.Server{
		Hostname: cfg.hostname,
		Chain:    chain,
		Logger:   log,
		Delivery: queue.Config{
			Transports: map[string]queue.Transport{"maildir": &queue.Maildir{Root: cfg.maildir}, "smtp": outbound},
			MinBackoff: cfg.retryMin,
			// DSNs come from the primary domain, whose key signs them
			// (the dkim rule signs our null-sender mail): they pass DMARC.
			BounceFrom: policy.Address{Local: "MAILER-DAEMON", Domain: cfg.domains[0]},
		},
		ShutdownTimeout: shutdownTimeout,
	}

	// Self-signed, made once and kept under ./data, when no certificate
	// was given (startup.go).
	reloader, err := s.loadCertificate()
	if err != nil {
		return nil, err
	}
	s.cert.Store(reloader)
	s.mta.SMTP = smtp.Config{
		TLSConfig: &tls.Config{GetCertificate: s.certificate},
		Limits:    cfg.limits,
	}
	// A bare RCPT TO:<postmaster> names the postmaster of the first
	// -domain, a local domain (the host name may not be one).
	s.mta.SMTP.PostmasterDomain = cfg.domains[0]
	if cfg.dns != "" {
		s.mta.SMTP.Resolver = resolver // reverse names only when DNS was pointed somewhere
	}
	if cfg.users != "" {
		opts := auth.CredentialOptions{Logger: log}
		if s.cluster != nil {
			// auth.NewFailureLimiter's Window and Cooldown (15 minutes) are
			// how long a failure count matters.
			lim := auth.NewFailureLimiter()
			if lim.Store, err = s.cluster.bucket("mtakit_authfail", 15*time.Minute); err != nil {
				return nil, fmt.Errorf("-users: %w", err)
			}
			opts.Limiter = lim
		}
		if s.creds, err = auth.LoadCredentialFile(cfg.users, opts); err != nil {
			return nil, fmt.Errorf("-users: %w", err)
		}
		s.mta.SMTP.Authenticator = s.creds
	}
	// The spool is opened last: nothing above can fail after it, and Serve
	// closes it.
	if s.cluster != nil {
		if s.mta.Store, err = s.cluster.openQueue(cfg.queueTimeout, log); err != nil {
			return nil, err
		}
	} else if cfg.queue == queueJournal {
		ev := s.withMetrics(queue.SpoolConfig{}).Events // its sync rounds, like the spool's
		if s.mta.Store, err = journal.Open(context.Background(), journal.Config{Dir: cfg.spool, SegmentSize: cfg.journalSegment, Logger: log, Events: ev, UnsafeNoSync: cfg.unsafeNoSync}); err != nil {
			return nil, fmt.Errorf("-spool: %w", err)
		}
	} else if s.mta.Store, err = queue.Open(cfg.spool, s.withMetrics(queue.SpoolConfig{Logger: log, UnsafeNoSync: cfg.unsafeNoSync})); err != nil {
		return nil, fmt.Errorf("-spool: %w", err)
	}
	s.remember() // what SIGHUP compares with (reload.go)
	return s, nil
}

// serve runs everything until ctx ends, then shuts down in order: stop
// taking mail, let sessions in DATA finish, stop the scheduler, close the
// spool (mtakit.Server.Serve does all that), and the antivirus receiver.
func (s *server) serve(ctx context.Context, stdout io.Writer) error {
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
		s.mta.Store.Close()
		s.cluster.close()
	}
	mta, err := listen(stdout, nil, "mta", s.cfg.listen)
	if err != nil {
		closeAll()
		return err
	}
	lns = append(lns, mta)
	s.mta.SMTP.Listeners = []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}
	if s.creds != nil && s.cfg.submission != "" {
		sub, err := listen(stdout, nil, "submission", s.cfg.submission)
		if err != nil {
			closeAll()
			return err
		}
		lns = append(lns, sub)
		s.mta.SMTP.Listeners = append(s.mta.SMTP.Listeners, smtp.Listener{Name: "submission", Role: smtp.RoleSubmission})
	} else {
		s.log.Info("submission port not opened: it needs -users")
	}
	stopAdmin, err := s.serveAdmin(ctx, stdout)
	if err != nil {
		closeAll()
		return err
	}
	defer stopAdmin()
	var antivirusLn net.Listener
	if s.antivirus != nil {
		if antivirusLn, err = listen(stdout, s.log, "antivirus receiver", s.cfg.receiver); err != nil {
			closeAll()
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if antivirusLn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.antivirus.Serve(ctx, antivirusLn); err != nil && ctx.Err() == nil {
				s.log.Error("antivirus receiver stopped", "error", err)
				cancel()
			}
		}()
	}
	if s.creds != nil {
		go s.creds.Watch(ctx, 5*time.Second)
	}
	s.watchRecipients(ctx)
	s.watchSignals(ctx) // SIGHUP reloads (reload.go)
	s.announce(stdout)  // "doe-family ready" (startup.go)
	err = s.mta.Serve(ctx, lns)
	s.abuse.close()
	// Messages held by the antivirus filter fail their delegation (a 451 to
	// their client) once the mail server has stopped taking new ones.
	cancel()
	if s.antivirus != nil {
		s.antivirus.Close()
	}
	for _, m := range s.milters {
		m.Close()
	}
	// Last: the queue (closed by Serve) and the shared state live there.
	s.cluster.close()
	fmt.Fprintln(stdout, "doe-family stopped")
	s.log.Info("doe-family stopped")
	return err
}
