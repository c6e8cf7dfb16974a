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
	"time"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/delegate"
	"github.com/mtakit/mtakit/policy/dnscache"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/relay"
	"github.com/mtakit/mtakit/smtp"
)

// server is doe-family put together: the SMTP server, the queue and its
// scheduler, and the antivirus receiver.
type server struct {
	cfg       *config
	log       *slog.Logger
	smtp      *smtp.Server
	spool     *queue.Spool
	scheduler *queue.Scheduler
	antivirus *delegate.Service
	creds     *auth.CredentialFile
}

func build(cfg *config, log *slog.Logger) (*server, error) {
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
	resolver := dnscache.New(dnsServers, dnscache.WithLogger(log))
	s := &server{cfg: cfg, log: log}

	rs := ruleSet{domains: cfg.domains, internal: internal, resolver: resolver, hostname: cfg.hostname}
	if cfg.dkimKey != "" {
		key, err := auth.LoadDKIMKey(cfg.dkimKey)
		if err != nil {
			return nil, fmt.Errorf("-dkim-key: %w", err)
		}
		if rs.signer, err = auth.NewDKIMSigner(cfg.domains[0], cfg.dkimSelector, key); err != nil {
			return nil, fmt.Errorf("-dkim-key: %w", err)
		}
	}
	if cfg.clamav != "" {
		// MaxConcurrent stays below clamsmtpd's MaxConnections, above which
		// it answers 421: more delegations wait for a free slot.
		s.antivirus = &delegate.Service{Name: "clamsmtpd", Filter: cfg.clamav, Receiver: cfg.receiver,
			Hostname: cfg.hostname, MaxConcurrent: 10, Logger: log}
		rs.antivirus = s.antivirus
	}
	chain := rs.chain(log)

	if s.spool, err = queue.Open(cfg.spool, queue.SpoolConfig{Logger: log, UnsafeNoSync: cfg.unsafeNoSync}); err != nil {
		return nil, fmt.Errorf("-spool: %w", err)
	}
	var outbound queue.Transport = &relay.MX{Resolver: resolver, Hostname: cfg.hostname, Logger: log}
	if cfg.relayhost != "" {
		outbound = &relay.Smarthost{Addr: cfg.relayhost, Hostname: cfg.hostname, Logger: log}
	}
	s.scheduler = queue.NewScheduler(s.spool, queue.Config{
		Chain:      chain,
		Transports: map[string]queue.Transport{"maildir": &queue.Maildir{Root: cfg.maildir}, "smtp": outbound},
		Hostname:   cfg.hostname,
		MinBackoff: cfg.retryMin,
		Logger:     log,
	})

	// Made once and kept under ./data when no certificate was given.
	if _, err := smtp.SelfSignedCertificate(cfg.tlsCert, cfg.tlsKey, []string{cfg.hostname, "localhost", "127.0.0.1"}); err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	reloader, err := smtp.NewCertReloader(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	scfg := smtp.Config{
		Hostname:  cfg.hostname,
		Chain:     chain,
		Queue:     s.spool,
		TLSConfig: &tls.Config{GetCertificate: reloader.GetCertificate},
		Limits:    cfg.limits,
		Logger:    log,
	}
	if cfg.dns != "" {
		scfg.Resolver = resolver // reverse names only when DNS was pointed somewhere
	}
	if cfg.users != "" {
		if s.creds, err = auth.LoadCredentialFile(cfg.users, auth.WithCredentialLogger(log)); err != nil {
			return nil, fmt.Errorf("-users: %w", err)
		}
		scfg.Authenticator = s.creds
	}
	if s.smtp, err = smtp.NewServer(scfg); err != nil {
		return nil, err
	}
	return s, nil
}

// serve runs everything until ctx ends, then shuts down in order: stop
// taking mail, let sessions in DATA finish, stop the scheduler, close the
// spool.
func (s *server) serve(ctx context.Context, stdout io.Writer) error {
	defer s.spool.Close()
	type job struct {
		what string
		ln   net.Listener
		lc   smtp.Listener
	}
	var jobs []job
	mta, err := listen(stdout, "mta", s.cfg.listen)
	if err != nil {
		return err
	}
	jobs = append(jobs, job{"mta", mta, smtp.Listener{Name: "mta", Role: smtp.RoleMTA}})
	if s.creds != nil && s.cfg.submission != "" {
		sub, err := listen(stdout, "submission", s.cfg.submission)
		if err != nil {
			mta.Close()
			return err
		}
		jobs = append(jobs, job{"submission", sub, smtp.Listener{Name: "submission", Role: smtp.RoleSubmission}})
	} else {
		s.log.Info("submission port not opened: it needs -users")
	}
	var antivirusLn net.Listener
	if s.antivirus != nil {
		if antivirusLn, err = listen(stdout, "antivirus receiver", s.cfg.receiver); err != nil {
			for _, j := range jobs {
				j.ln.Close()
			}
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(jobs)+3)
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.smtp.Serve(j.ln, j.lc); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", j.what, err)
			}
		}()
	}
	if antivirusLn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.antivirus.Serve(ctx, antivirusLn); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("antivirus receiver: %w", err)
			}
		}()
	}
	schedCtx, stopScheduler := context.WithCancel(context.Background())
	defer stopScheduler()
	schedDone := make(chan error, 1)
	go func() { schedDone <- s.scheduler.Run(schedCtx) }()
	if s.creds != nil {
		go s.creds.Watch(ctx, 5*time.Second)
	}
	fmt.Fprintf(stdout, "doe-family ready: domains %v, spool %s, maildir %s\n", s.cfg.domains, s.cfg.spool, s.cfg.maildir)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer scancel()
	if err := s.smtp.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown", "error", err)
		s.smtp.Close()
	}
	cancel()
	if s.antivirus != nil {
		s.antivirus.Close()
	}
	wg.Wait()
	stopScheduler()
	if err := <-schedDone; err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("scheduler", "error", err)
	}
	fmt.Fprintln(stdout, "doe-family stopped")
	return runErr
}
