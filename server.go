package mtakit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// Store is what a Server needs of the queue's storage: the SMTP server
// enqueues into it, the scheduler delivers from it, and Run closes it when
// it returns. *queue.Spool is one.
type Store interface {
	smtp.Queue
	queue.Store
	Close() error
}

// defaultShutdownTimeout is Server.ShutdownTimeout's zero value.
const defaultShutdownTimeout = 30 * time.Second

// Server is a complete mail server: the SMTP listeners, the queue store and
// the scheduler that runs the postq and delivery rules and the transports.
// Set its fields, then call Run (or Serve with listeners of your own) once.
type Server struct {
	// Hostname is our name in the greeting, Received fields and DSNs.
	// Default: os.Hostname().
	Hostname string
	// Chain holds the rules of every stage; required. When its Logger is
	// nil, Run sets it to Logger.
	Chain *policy.Chain
	// Store keeps accepted mail until it is delivered; required. Run
	// closes it when it returns.
	Store Store
	// SMTP configures the listeners, TLS, AUTH and limits. Leave its
	// Hostname, Chain, Queue and Logger zero: Run sets them from the
	// fields above.
	SMTP smtp.Config
	// Delivery configures the scheduler: transports, default route,
	// retries. Leave its Chain, Hostname and Logger zero.
	Delivery queue.Config
	// ShutdownTimeout bounds how long, once ctx ends, sessions receiving a
	// message may take to finish it (their client gets its 250); the
	// connections left are then closed. Zero means 30 seconds.
	ShutdownTimeout time.Duration
	// Logger receives the logs of the SMTP server, the scheduler and (see
	// Chain) the rules. nil means slog.Default().
	Logger *slog.Logger
	// Events, when set, is told what the SMTP server, the scheduler and
	// the rules do, for metrics: Run sets it as SMTP.Events and
	// Delivery.Events (unless they are set) and adds its Observe to
	// Chain.Observer (after an observer already there). *metrics.Metrics
	// of mtakit/policy/metrics is one; give it to the spool too
	// (queue.SpoolConfig.Events) for the commit rounds.
	Events Events
}

// Events receives the events of a whole server, for metrics: those of the
// SMTP server, of the scheduler (and spool), and the rules' decisions.
type Events interface {
	smtp.Events
	queue.Events
	Observe(policy.Decision)
}

// Run listens on the address of each of SMTP.Listeners and serves them as
// Serve does.
func (s *Server) Run(ctx context.Context) error {
	lns := make([]net.Listener, 0, len(s.SMTP.Listeners))
	var lc net.ListenConfig
	for _, l := range s.SMTP.Listeners {
		ln, err := lc.Listen(ctx, "tcp", l.Addr)
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			s.Store.Close()
			return fmt.Errorf("mtakit: listener %q: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	return s.Serve(ctx, lns)
}

// Serve serves SMTP on lns, lns[i] with the settings of SMTP.Listeners[i]
// (whose Addr is then unused), and runs the scheduler, until ctx ends or a
// listener fails. It then shuts down in order: stop accepting connections,
// let sessions receiving a message finish within ShutdownTimeout, stop the
// scheduler (deliveries in progress are cut short and retried at the next
// start), close the store. It returns nil after ctx ended, else the error
// that stopped it. The listeners and the store are closed when it returns.
func (s *Server) Serve(ctx context.Context, lns []net.Listener) (err error) {
	defer func() {
		if cerr := s.Store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("mtakit: closing the store: %w", cerr)
		}
	}()
	srv, sched, err := s.build(lns)
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return err
	}
	log := s.logger()

	schedCtx, stopScheduler := context.WithCancel(context.WithoutCancel(ctx))
	defer stopScheduler()
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(schedCtx) }()

	// The listeners are served with a context of their own: when ctx ends
	// they stop through Shutdown, which lets messages being received
	// finish, not through the abrupt stop a cancelled context means.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	var wg sync.WaitGroup
	errc := make(chan error, len(lns))
	for i, ln := range lns {
		lc := s.SMTP.Listeners[i]
		log.Info("listening", "listener", lc.Name, "addr", ln.Addr().String(), "role", lc.Role.String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(serveCtx, ln, lc); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				errc <- fmt.Errorf("mtakit: listener %q: %w", lc.Name, err)
			}
		}()
	}

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = defaultShutdownTimeout
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("shutdown: sessions cut short", "error", serr)
	}
	stopServing()
	wg.Wait()
	stopScheduler()
	if serr := <-schedDone; serr != nil && !errors.Is(serr, context.Canceled) && err == nil {
		err = fmt.Errorf("mtakit: scheduler: %w", serr)
	}
	return err
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// build checks the configuration and makes the SMTP server and the
// scheduler.
func (s *Server) build(lns []net.Listener) (*smtp.Server, *queue.Scheduler, error) {
	switch {
	case s.Chain == nil:
		return nil, nil, fmt.Errorf("%w: Server.Chain is required", smtp.ErrConfig)
	case s.Store == nil:
		return nil, nil, fmt.Errorf("%w: Server.Store is required", smtp.ErrConfig)
	case len(lns) != len(s.SMTP.Listeners):
		return nil, nil, fmt.Errorf("%w: %d listeners for %d SMTP.Listeners", smtp.ErrConfig, len(lns), len(s.SMTP.Listeners))
	case len(lns) == 0:
		return nil, nil, fmt.Errorf("%w: no listeners", smtp.ErrConfig)
	case s.SMTP.Hostname != "" || s.SMTP.Chain != nil || s.SMTP.Queue != nil || s.SMTP.Logger != nil:
		return nil, nil, fmt.Errorf("%w: set Hostname, Chain, Store and Logger on Server, not in Server.SMTP", smtp.ErrConfig)
	case s.Delivery.Hostname != "" || s.Delivery.Chain != nil || s.Delivery.Logger != nil:
		return nil, nil, fmt.Errorf("%w: set Hostname, Chain and Logger on Server, not in Server.Delivery", smtp.ErrConfig)
	}
	// An empty Hostname is defaulted by smtp and queue alike.
	host := s.Hostname
	log := s.logger()
	if s.Chain.Logger == nil {
		s.Chain.Logger = log
	}
	scfg := s.SMTP
	scfg.Hostname, scfg.Chain, scfg.Logger = host, s.Chain, log
	qcfg := s.Delivery
	if ev := s.Events; ev != nil {
		if scfg.Events == nil {
			scfg.Events = ev
		}
		if qcfg.Events == nil {
			qcfg.Events = ev
		}
	}
	qcfg.Hostname, qcfg.Chain, qcfg.Logger = host, s.Chain, log
	sched := queue.NewScheduler(s.Store, qcfg)
	scfg.Queue = admitted{s.Store, sched}
	srv, err := smtp.NewServer(scfg)
	if err != nil {
		return nil, nil, err
	}
	if ev := s.Events; ev != nil {
		if prev := s.Chain.Observer; prev != nil {
			s.Chain.Observer = func(d policy.Decision) { prev(d); ev.Observe(d) }
		} else {
			s.Chain.Observer = ev.Observe
		}
	}
	return srv, sched, nil
}

// admitted is the smtp server's queue: the store, each message admitted
// by the scheduler first (its in-flow control: see queue.Config.InFlowLimit).
type admitted struct {
	st    Store
	sched *queue.Scheduler
}

func (a admitted) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if err := a.sched.Admit(ctx); err != nil {
		return err
	}
	return a.st.Enqueue(ctx, tx, m)
}

// SupportsDSN reports what the store does (the smtp server advertises DSN
// when it does).
func (a admitted) SupportsDSN() bool {
	d, ok := a.st.(interface{ SupportsDSN() bool })
	return ok && d.SupportsDSN()
}
