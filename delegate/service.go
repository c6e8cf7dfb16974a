package delegate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/policy"
)

// Defaults of the Service fields left zero.
const (
	defaultTimeout        = 2 * time.Minute
	defaultMaxGrowth      = 1 << 20
	defaultCommandTimeout = time.Minute
)

// Errors a delegation can end with, for errors.Is.
var (
	// ErrTimeout: the message did not come back within Service.Timeout
	// (or the rule's context ended first).
	ErrTimeout = errors.New("delegate: no message back from the filter in time")
	// ErrNotServing: the receiver of the Service is not running, so the
	// message could never come back.
	ErrNotServing = errors.New("delegate: the receiver is not serving")
	// ErrClosed: the receiver was closed while the delegation waited.
	ErrClosed = errors.New("delegate: the receiver was closed")
	// ErrTooLarge: the returned message grew by more than MaxGrowth.
	ErrTooLarge = errors.New("delegate: the returned message is too large")
)

// Service is one outside SMTP content filter (clamsmtpd, spampd, any
// filter that relays what it receives to a fixed next hop) and the receiver
// where the filter sends each message back.
//
// The receiver is a small SMTP server of its own, separate from the server
// clients talk to: a message arriving there does not start a new
// transaction, it is matched to the delegation waiting for it through the
// TokenHeader field. It accepts connections only from AllowedPeers, and
// MAIL, RCPT and DATA only when they match a waiting delegation; anything
// else gets 550 5.7.1.
//
// Configure the fields, start the receiver with ListenAndServe or Serve,
// then use the Service in Rule. A Service must not be copied after first
// use. Its methods are safe for concurrent use.
type Service struct {
	// Name identifies the service in logs.
	Name string
	// Filter is the host:port where the filter listens (clamsmtpd's
	// Listen, e.g. 127.0.0.1:10026).
	Filter string
	// Receiver is the host:port the receiver listens on; the filter must
	// send the messages back there (clamsmtpd's OutAddress, e.g.
	// 127.0.0.1:10024).
	Receiver string
	// Timeout bounds the whole round trip of one message: connecting to
	// the filter, sending, and the message coming back. Default 2 minutes.
	Timeout time.Duration
	// AllowedPeers are the addresses the receiver accepts connections
	// from. Default: loopback (127.0.0.0/8 and ::1).
	AllowedPeers []netip.Prefix
	// FailOpen lets the message go on unscanned, with a warning in the log,
	// when the delegation fails. By default (false) the transaction gets a
	// 451 4.7.1 and the client retries later.
	FailOpen bool
	// Hostname is the name in our EHLO to the filter and in the receiver's
	// greeting. Default: os.Hostname.
	Hostname string
	// TempDir is where returned messages are stored until the transaction
	// is done with them. Default: os.TempDir.
	TempDir string
	// MaxGrowth bounds how many bytes a returned message may have more
	// than the one sent (the filter adds header fields). Default 1 MiB.
	MaxGrowth int64
	// CommandTimeout bounds each read and write of the receiver's SMTP
	// conversation with the filter. Default 1 minute.
	CommandTimeout time.Duration
	// MaxConcurrent bounds how many delegations of this service are in
	// flight at once (0: no bound); more wait for a slot within their
	// Timeout. Keep it below the filter's own connection limit
	// (clamsmtpd's MaxConnections, 64 by default), which answers 421 to
	// the connections above it.
	MaxConcurrent int
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger

	semOnce sync.Once
	sem     chan struct{}

	mu      sync.Mutex
	waiters map[string]*waiter
	srv     *smtp.Server
}

// waiter is one delegation waiting for its message.
type waiter struct {
	token string
	from  policy.Address
	rcpts []policy.Address
	limit int64       // most bytes the returned message may have
	ch    chan result // buffered (1): the receiver never blocks on it
}

// result is what the receiver hands to a waiter.
type result struct {
	file *tempFile
	size int64
	err  error
}

func (s *Service) log() *slog.Logger {
	l := s.Logger
	if l == nil {
		l = slog.Default()
	}
	return l.With(slog.String("delegate", s.Name))
}

// acquire takes a slot of MaxConcurrent; release gives it back.
func (s *Service) acquire(ctx context.Context) (release func(), err error) {
	s.semOnce.Do(func() {
		if s.MaxConcurrent > 0 {
			s.sem = make(chan struct{}, s.MaxConcurrent)
		}
	})
	if s.sem == nil {
		return func() {}, nil
	}
	select {
	case s.sem <- struct{}{}:
		return func() { <-s.sem }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a free slot (MaxConcurrent %d)", ErrTimeout, s.MaxConcurrent)
	}
}

func (s *Service) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return defaultTimeout
}

func (s *Service) hostname() string {
	if s.Hostname != "" {
		return s.Hostname
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

func (s *Service) maxGrowth() int64 {
	if s.MaxGrowth > 0 {
		return s.MaxGrowth
	}
	return defaultMaxGrowth
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// allowed reports whether the receiver accepts a connection from addr.
func (s *Service) allowed(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	peers := s.AllowedPeers
	if peers == nil {
		peers = loopback
	}
	for _, p := range peers {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ListenAndServe listens on s.Receiver and serves the receiver until ctx
// ends or Close is called; it then returns nil.
func (s *Service) ListenAndServe(ctx context.Context) error {
	if s.Receiver == "" {
		return errors.New("delegate: Service.Receiver is empty")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.Receiver)
	if err != nil {
		return fmt.Errorf("delegate %s: %w", s.Name, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves the receiver on ln (which it closes) until ctx ends or
// Close is called; it then returns nil. Only one Serve may run at a time.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := smtp.NewServer(backend{s})
	srv.Domain = s.hostname()
	ct := s.CommandTimeout
	if ct <= 0 {
		ct = defaultCommandTimeout
	}
	srv.ReadTimeout, srv.WriteTimeout = ct, ct
	srv.MaxRecipients = 1000
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogPrintf{s.log()}

	s.mu.Lock()
	if s.srv != nil {
		s.mu.Unlock()
		ln.Close()
		return errors.New("delegate: the receiver is already serving")
	}
	s.srv = srv
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { s.shutdown(srv) })
	defer stop()
	s.log().Info("receiver listening", slog.String("addr", ln.Addr().String()), slog.String("filter", s.Filter))
	err := srv.Serve(peerListener{Listener: ln, svc: s})
	s.shutdown(srv)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close stops the receiver. Delegations waiting for a message fail at once
// with ErrClosed.
func (s *Service) Close() error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	s.shutdown(srv)
	return nil
}

// shutdown closes srv if it is still the current server and fails every
// waiter.
func (s *Service) shutdown(srv *smtp.Server) {
	s.mu.Lock()
	if s.srv != srv {
		s.mu.Unlock()
		return
	}
	s.srv = nil
	for tok, w := range s.waiters {
		delete(s.waiters, tok)
		w.ch <- result{err: ErrClosed}
	}
	s.mu.Unlock()
	srv.Close()
}

// register adds w to the waiters; it fails when the receiver is not
// serving.
func (s *Service) register(w *waiter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return ErrNotServing
	}
	if s.waiters == nil {
		s.waiters = make(map[string]*waiter)
	}
	s.waiters[w.token] = w
	return nil
}

// unregister removes w, and releases a message the receiver handed to it
// that nobody took.
func (s *Service) unregister(w *waiter) {
	s.mu.Lock()
	if s.waiters[w.token] == w {
		delete(s.waiters, w.token)
	}
	s.mu.Unlock()
	select {
	case r := <-w.ch:
		if r.file != nil {
			r.file.Close()
		}
	default:
	}
}

// lookup returns the waiter of token, or nil.
func (s *Service) lookup(token string) *waiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters[token]
}

// deliver hands r to the waiter of token if it still waits, and reports
// whether it did.
func (s *Service) deliver(token string, r result) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.waiters[token]
	if !ok {
		return false
	}
	delete(s.waiters, token)
	w.ch <- r
	return true
}

// expects reports whether some waiting delegation has sender from and,
// when rcpt is not nil, recipient *rcpt.
func (s *Service) expects(from policy.Address, rcpt *policy.Address) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.waiters {
		if !w.from.Equal(from) {
			continue
		}
		if rcpt == nil || containsAddr(w.rcpts, *rcpt) {
			return true
		}
	}
	return false
}

func containsAddr(list []policy.Address, a policy.Address) bool {
	for _, b := range list {
		if b.Equal(a) {
			return true
		}
	}
	return false
}

// peerListener refuses connections from outside AllowedPeers with a 554
// greeting, and keeps accepting (an error from Accept would end Serve).
type peerListener struct {
	net.Listener
	svc *Service
}

func (l peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.svc.allowed(c.RemoteAddr()) {
			return c, nil
		}
		l.svc.log().Warn("receiver refused a connection from outside AllowedPeers", slog.String("peer", c.RemoteAddr().String()))
		go func() {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "554 5.7.1 %s Connection refused: not an allowed filter\r\n", l.svc.hostname())
			c.Close()
		}()
	}
}

// slogPrintf adapts a slog.Logger to go-smtp's Logger.
type slogPrintf struct{ l *slog.Logger }

func (p slogPrintf) Printf(format string, v ...any) {
	p.l.Warn("receiver: " + fmt.Sprintf(format, v...))
}

func (p slogPrintf) Println(v ...any) { p.l.Warn("receiver: " + fmt.Sprint(v...)) }

// tempFile is a returned message on disk, removed when closed.
type tempFile struct {
	*os.File
	once sync.Once
}

func (f *tempFile) Close() error {
	var err error
	f.once.Do(func() {
		err = errors.Join(f.File.Close(), os.Remove(f.File.Name()))
	})
	return err
}
