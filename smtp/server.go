package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/policy"
)

// Queue stores an accepted message durably. Enqueue returns only once the
// message and its envelope are fsynced; the server answers 250 only after it
// returned nil. tx.ID is the queue ID the server assigned at MAIL (unique,
// roughly sortable by time, safe as a file name). tx.Quarantine() != ""
// means the message belongs in that quarantine queue.
type Queue interface {
	Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error
}

// Authenticator checks SASL PLAIN/LOGIN credentials. A nil error accepts
// them. An error whose chain has a `Temporary() bool` method returning false
// refuses them with 535 5.7.8: auth.ErrInvalidCredentials is such an error.
// Any other error gives 454 4.7.0 (try again later): one whose Temporary
// method returns true (too many failures from this IP), and one that says
// nothing, a failure of the Authenticator's own (a database down), which
// must never read to the client as a wrong password.
type Authenticator interface {
	Authenticate(ctx context.Context, remote netip.Addr, username, password string) error
}

// Resolver is the DNS used for the forward-confirmed reverse name of a
// client. *net.Resolver satisfies it.
type Resolver interface {
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// dsnQueue is implemented by a Queue that can send delivery status
// notifications; the server then advertises DSN.
type dsnQueue interface{ SupportsDSN() bool }

// Role is what a listener is for.
type Role uint8

const (
	// RoleMTA is port 25: mail from other servers, no AUTH needed. AUTH is
	// offered after STARTTLS when an Authenticator is set.
	RoleMTA Role = iota + 1
	// RoleSubmission is port 587: AUTH is required before MAIL and is
	// offered only after STARTTLS, unless Listener.AllowInsecureAuth.
	RoleSubmission
	// RoleImplicitTLS is port 465: TLS from the first byte, AUTH required.
	RoleImplicitTLS
)

func (r Role) String() string {
	switch r {
	case RoleMTA:
		return "mta"
	case RoleSubmission:
		return "submission"
	case RoleImplicitTLS:
		return "implicit-tls"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Listener describes one listening socket.
type Listener struct {
	// Name identifies the listener in policy.Conn.Listener and the logs.
	Name string
	// Addr is the host:port ListenAndServe listens on.
	Addr string
	Role Role
	// AllowInsecureAuth offers AUTH on a plaintext connection (submission
	// only; never do this on a network you do not control).
	AllowInsecureAuth bool
}

func (l Listener) authRequired() bool { return l.Role == RoleSubmission || l.Role == RoleImplicitTLS }

// Limits bound what one client may cost. A zero field takes its default
// (see DefaultLimits); a negative one disables the limit.
type Limits struct {
	// MaxMessageBytes is the largest message body accepted (default 25
	// MiB). A larger one is read to its end and refused with 552 5.3.4;
	// nothing is queued.
	MaxMessageBytes int64
	// MaxRecipients per transaction (default 100); more get 452 4.5.3.
	MaxRecipients int
	// MaxLineLength bounds command and data lines, CRLF included (default
	// 2000: twice the 1000 of RFC 5321, as go-smtp, since real-world mail
	// breaks the RFC limit; Postfix tolerates 2048). A longer line ends the
	// connection with 500 5.4.0.
	MaxLineLength int
	// CommandTimeout is the time a client has to send one complete command
	// line (default 5 min); a slow or idle client gets 421 4.4.2 and is
	// disconnected. It bounds writes of replies and TLS handshakes too.
	CommandTimeout time.Duration
	// DataTimeout is the time a client has to send a whole message body
	// after 354 (default 10 min); it also bounds preq rules and Enqueue.
	DataTimeout time.Duration
	// MaxConnections in total over every listener (default 1000), and per
	// client IP (default 20). Over either the client gets 421 4.7.0 and is
	// disconnected before the greeting.
	MaxConnections      int
	MaxConnectionsPerIP int
	// MaxErrors is the number of error replies a session may get before it
	// is disconnected with 421 4.7.0 (default 10). A queued message resets
	// the count; 452 4.5.3 (too many recipients) does not count.
	MaxErrors int
}

// DefaultLimits returns the limits used for zero fields of Limits.
func DefaultLimits() Limits {
	return Limits{
		MaxMessageBytes:     25 << 20,
		MaxRecipients:       100,
		MaxLineLength:       2000,
		CommandTimeout:      5 * time.Minute,
		DataTimeout:         10 * time.Minute,
		MaxConnections:      1000,
		MaxConnectionsPerIP: 20,
		MaxErrors:           10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	pick64 := func(v, def int64) int64 {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0
		}
		return v
	}
	pick := func(v, def int) int { return int(pick64(int64(v), int64(def))) }
	pickD := func(v, def time.Duration) time.Duration { return time.Duration(pick64(int64(v), int64(def))) }
	return Limits{
		MaxMessageBytes:     pick64(l.MaxMessageBytes, d.MaxMessageBytes),
		MaxRecipients:       pick(l.MaxRecipients, d.MaxRecipients),
		MaxLineLength:       pick(l.MaxLineLength, d.MaxLineLength),
		CommandTimeout:      pickD(l.CommandTimeout, d.CommandTimeout),
		DataTimeout:         pickD(l.DataTimeout, d.DataTimeout),
		MaxConnections:      pick(l.MaxConnections, d.MaxConnections),
		MaxConnectionsPerIP: pick(l.MaxConnectionsPerIP, d.MaxConnectionsPerIP),
		MaxErrors:           pick(l.MaxErrors, d.MaxErrors),
	}
}

// Config configures a Server.
type Config struct {
	// Hostname is our name in the greeting and the Received header.
	// Default: os.Hostname().
	Hostname string
	// Chain holds the rules; required.
	Chain *policy.Chain
	// Queue stores accepted messages; required.
	Queue Queue
	// Authenticator checks AUTH credentials; nil disables AUTH (and with
	// it submission listeners, which require AUTH).
	Authenticator Authenticator
	// TLSConfig enables STARTTLS and implicit TLS. It is cloned; MinVersion
	// defaults to TLS 1.2 and the cipher suites to Go's defaults.
	TLSConfig *tls.Config
	// Resolver, when set, finds the forward-confirmed reverse DNS name of
	// each client before the connect rules run. Nil: no lookup.
	Resolver Resolver
	Limits   Limits
	// SpoolDir holds messages larger than 64 KiB while they are received
	// (default os.TempDir()): one unlinked file per connection, created
	// for its first such message. Smaller messages stay in memory.
	// NewServer checks that a file can be created there.
	SpoolDir string
	// EnableDSN advertises DSN (RFC 3461); it is also enabled when Queue
	// has a SupportsDSN() bool method returning true.
	EnableDSN bool
	// PostmasterDomain is the domain of the address a bare
	// "RCPT TO:<postmaster>" (no domain, RFC 5321 section 4.5.1) is taken
	// to name: the recipient rules see postmaster@PostmasterDomain, in
	// lower case, as if the client had written it. Set it to the primary
	// mail domain, one the recipient rules accept as local. Default:
	// Hostname.
	PostmasterDomain string
	// Listeners are opened by ListenAndServe.
	Listeners []Listener
	// Logger receives connection and transaction logs (never AUTH
	// secrets). Default slog.Default().
	Logger *slog.Logger
	// Events, when set, is told of connections, sessions, TLS handshakes,
	// AUTH attempts and messages, for metrics (see Events). Nil: nothing
	// is reported.
	Events Events
}

// Server is an SMTP server that runs a policy.Chain on every connection and
// hands accepted mail to a Queue. Create it with NewServer, then call Serve
// or ListenAndServe; stop it with Shutdown or Close.
type Server struct {
	cfg        Config
	limits     Limits
	postmaster string // the domain of a bare postmaster (see input.go)
	tls        *tls.Config
	log        *slog.Logger
	dsn        bool
	ctx        context.Context // cancelled by Close
	cancel     context.CancelFunc
	mu         sync.Mutex
	closed     bool
	shutdown   bool
	total      int
	perIP      map[netip.Addr]int
	conns      map[*conn]struct{}
	servers    []*gosmtp.Server
	lns        []*listener
	wg         sync.WaitGroup // Serve calls and connection admissions
}

// Errors returned by NewServer, Serve and ListenAndServe.
var (
	ErrServerClosed = errors.New("smtp: server closed")
	ErrConfig       = errors.New("smtp: bad configuration")
)

// checkSpoolDir makes a spool file in dir as a connection does: a missing
// or read-only SpoolDir would otherwise show only at the first message
// over 64 KiB, as a 451.
func checkSpoolDir(dir string) error {
	f, err := newSpoolFile(dir)
	if err != nil {
		return err
	}
	return f.Close()
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Chain == nil {
		return nil, fmt.Errorf("%w: Chain is required", ErrConfig)
	}
	if cfg.Queue == nil {
		return nil, fmt.Errorf("%w: Queue is required", ErrConfig)
	}
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		cfg.Hostname = h
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if err := checkSpoolDir(cfg.SpoolDir); err != nil {
		return nil, fmt.Errorf("%w: SpoolDir: %w", ErrConfig, err)
	}
	pm := cfg.PostmasterDomain
	if pm == "" {
		pm = cfg.Hostname
	}
	pm = strings.ToLower(strings.TrimSuffix(pm, "."))
	if a, err := policy.ParseAddress("postmaster@" + pm); err != nil || a.Domain != pm {
		if cfg.PostmasterDomain != "" {
			return nil, fmt.Errorf("%w: PostmasterDomain %q is not a domain", ErrConfig, cfg.PostmasterDomain)
		}
		pm = "" // a host name that is no domain: a bare postmaster gets 501
	}
	s := &Server{cfg: cfg, limits: cfg.Limits.withDefaults(), log: cfg.Logger, postmaster: pm,
		perIP: map[netip.Addr]int{}, conns: map[*conn]struct{}{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.TLSConfig != nil {
		s.tls = cfg.TLSConfig.Clone()
		if s.tls.MinVersion == 0 || s.tls.MinVersion < tls.VersionTLS12 {
			s.tls.MinVersion = tls.VersionTLS12
		}
	}
	s.dsn = cfg.EnableDSN
	if q, ok := cfg.Queue.(dsnQueue); ok && q.SupportsDSN() {
		s.dsn = true
	}
	for _, l := range cfg.Listeners {
		if err := s.checkListener(l); err != nil {
			return nil, err
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func (s *Server) checkListener(l Listener) error {
	switch l.Role {
	case RoleMTA:
	case RoleSubmission, RoleImplicitTLS:
		if s.cfg.Authenticator == nil {
			return fmt.Errorf("%w: listener %q (%s) requires AUTH but no Authenticator is set", ErrConfig, l.Name, l.Role)
		}
		if s.tls == nil && !(l.Role == RoleSubmission && l.AllowInsecureAuth) {
			return fmt.Errorf("%w: listener %q (%s) needs TLSConfig", ErrConfig, l.Name, l.Role)
		}
	default:
		return fmt.Errorf("%w: listener %q has no role", ErrConfig, l.Name)
	}
	if l.Name == "" {
		return fmt.Errorf("%w: listener without a name", ErrConfig)
	}
	return nil
}

// Hostname returns the name the server uses for itself.
func (s *Server) Hostname() string { return s.cfg.Hostname }

// Serve accepts connections on l and serves them with the settings of lc
// (lc.Addr is ignored) until Shutdown or Close, or until ctx ends, which
// closes the server as Close does (for a graceful stop call Shutdown); it
// then returns ErrServerClosed. l is closed when Serve returns.
func (s *Server) Serve(ctx context.Context, l net.Listener, lc Listener) error {
	if err := s.checkListener(lc); err != nil {
		l.Close()
		return err
	}
	defer context.AfterFunc(ctx, func() { s.Close() })()
	gs := gosmtp.NewServer(&backend{srv: s, lc: lc})
	gs.Domain = s.cfg.Hostname
	gs.MaxMessageBytes = s.limits.MaxMessageBytes
	gs.MaxRecipients = s.limits.MaxRecipients
	gs.MaxLineLength = s.limits.MaxLineLength
	gs.ReadTimeout = s.limits.CommandTimeout
	gs.WriteTimeout = s.limits.CommandTimeout
	gs.EnableSMTPUTF8 = true
	gs.EnableDSN = s.dsn
	gs.ErrorLog = slogPrinter{s.log.With("listener", lc.Name)}
	// TLS, implicit or STARTTLS, is done below go-smtp (see admit and
	// input.go), so go-smtp sees plaintext: it must neither handle STARTTLS
	// nor refuse AUTH for want of TLS. The session decides where AUTH is
	// offered.
	gs.AllowInsecureAuth = true

	wl := newListener(s, l, lc)
	s.mu.Lock()
	if s.closed || s.shutdown {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.servers = append(s.servers, gs)
	s.lns = append(s.lns, wl)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	go wl.run()
	err := gs.Serve(wl)
	wl.Close()
	wl.admitting.Wait()
	s.mu.Lock()
	stopping := s.closed || s.shutdown
	s.mu.Unlock()
	if stopping || err == nil {
		return ErrServerClosed
	}
	return err
}

// ListenAndServe listens on every Config.Listeners address and serves them
// as Serve does. It returns the first error of a listener (a failure to
// listen closes those already open) or ErrServerClosed.
func (s *Server) ListenAndServe(ctx context.Context) error {
	if len(s.cfg.Listeners) == 0 {
		return fmt.Errorf("%w: no listeners", ErrConfig)
	}
	var ls []net.Listener
	for _, lc := range s.cfg.Listeners {
		var cfg net.ListenConfig
		l, err := cfg.Listen(ctx, "tcp", lc.Addr)
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return fmt.Errorf("smtp: listener %q: %w", lc.Name, err)
		}
		ls = append(ls, l)
	}
	errc := make(chan error, len(ls))
	for i, l := range ls {
		go func() { errc <- s.Serve(ctx, l, s.cfg.Listeners[i]) }()
	}
	first := <-errc
	if !errors.Is(first, ErrServerClosed) {
		s.Close()
	}
	for range len(ls) - 1 {
		<-errc
	}
	return first
}

// Shutdown stops the server gracefully: it stops accepting, closes idle
// sessions at once, lets sessions that are receiving a message finish it
// (their reply, 250 included, is sent before they are closed) and waits for
// every session to end. When ctx ends first, the remaining connections are
// closed and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.shutdown = true
	lns, servers, conns := s.snapshotLocked()
	s.mu.Unlock()

	for _, l := range lns {
		l.Close()
	}
	for _, c := range conns {
		c.shutdown()
	}
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, gs := range servers {
			wg.Add(1)
			go func() { defer wg.Done(); gs.Shutdown(context.Background()) }()
		}
		wg.Wait()
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// snapshotLocked copies what Shutdown and Close act on; s.mu is held.
func (s *Server) snapshotLocked() ([]*listener, []*gosmtp.Server, []*conn) {
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return append([]*listener(nil), s.lns...), append([]*gosmtp.Server(nil), s.servers...), conns
}

// Close closes every listener and connection at once. A message being
// received is lost to the client (it got no 250) and not queued.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.closed = true
	lns, servers, conns := s.snapshotLocked()
	s.mu.Unlock()
	s.cancel()
	for _, l := range lns {
		l.Close()
	}
	for _, gs := range servers {
		gs.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return nil
}

// acquire reserves a connection slot for ip; false when a limit is reached.
func (s *Server) acquire(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limits.MaxConnections > 0 && s.total >= s.limits.MaxConnections {
		return false
	}
	if s.limits.MaxConnectionsPerIP > 0 && s.perIP[ip] >= s.limits.MaxConnectionsPerIP {
		return false
	}
	s.total++
	s.perIP[ip]++
	return true
}

func (s *Server) release(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if n := s.perIP[ip] - 1; n > 0 {
		s.perIP[ip] = n
	} else {
		delete(s.perIP, ip)
	}
}

// register records c; false when the server is stopping.
func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.shutdown {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// slogPrinter adapts go-smtp's ErrorLog to slog.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) {
	p.l.Debug("go-smtp", "msg", fmt.Sprintf(format, v...))
}

func (p slogPrinter) Println(v ...any) { p.l.Debug("go-smtp", "msg", fmt.Sprint(v...)) }
