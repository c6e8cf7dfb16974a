package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// listener wraps the user's net.Listener for go-smtp. Its own goroutine
// accepts raw connections; each is admitted in a goroutine of its own
// (connection limits, implicit TLS handshake, reverse DNS, connect rules)
// and only then handed to go-smtp through Accept, so a slow client or rule
// never holds up the others. A refused connection gets its reply and is
// closed here; Accept never returns an error for it (an error would end
// go-smtp's Serve).
type listener struct {
	net.Listener
	srv *Server
	lc  Listener

	ready     chan *conn
	done      chan struct{}
	closeOnce sync.Once

	errMu     sync.Mutex
	err       error
	mu        sync.Mutex
	closed    bool
	admitting sync.WaitGroup // admissions in progress; Serve waits for them
}

func newListener(s *Server, l net.Listener, lc Listener) *listener {
	return &listener{Listener: l, srv: s, lc: lc, ready: make(chan *conn), done: make(chan struct{})}
}

func (l *listener) run() {
	var delay time.Duration
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if isTimeout(err) || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.srv.log.Warn("accept failed; retrying", "listener", l.lc.Name, "error", err, "in", delay)
				select {
				case <-time.After(delay):
				case <-l.done:
					return
				}
				continue
			}
			l.errMu.Lock()
			l.err = err
			l.errMu.Unlock()
			l.Close()
			return
		}
		delay = 0
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			raw.Close()
			return
		}
		l.admitting.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.admitting.Done()
			l.admit(raw)
		}()
	}
}

// refusedCredentials reports whether an Authenticator's error refuses the
// credentials (see Authenticator) rather than failing to check them.
func refusedCredentials(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && !t.Temporary()
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Accept returns the next admitted connection.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		l.errMu.Lock()
		defer l.errMu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections being admitted are closed.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return ap
		}
	}
	return netip.AddrPort{}
}

// admit runs everything that happens before the greeting.
func (l *listener) admit(raw net.Conn) {
	s := l.srv
	remote, local := addrPort(raw.RemoteAddr()), addrPort(raw.LocalAddr())
	ip := remote.Addr()
	implicit := l.lc.Role == RoleImplicitTLS
	if !s.acquire(ip) {
		s.connected(l.lc.Name, false)
		s.log.Warn("connection refused: too many connections", "listener", l.lc.Name, "remote", remote.String())
		if !implicit {
			raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
			raw.Write([]byte("421 4.7.0 Too many connections, try again later\r\n"))
		}
		raw.Close()
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.limits.CommandTimeout)
	defer cancel()
	go func() { // a closing listener stops the admission
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var nc net.Conn = raw
	var tlsState *tls.ConnectionState
	if implicit {
		tc := tls.Server(raw, s.tls)
		raw.SetDeadline(time.Now().Add(s.limits.CommandTimeout))
		err := tc.HandshakeContext(ctx)
		s.tlsHandshake(l.lc.Name, err)
		if err != nil {
			s.connected(l.lc.Name, false)
			s.log.Info("TLS handshake failed", "listener", l.lc.Name, "remote", remote.String(), "error", err)
			raw.Close()
			s.release(ip)
			return
		}
		raw.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		nc, tlsState = tc, &st
	}
	c := newConn(s, nc, ip)
	c.pc = &policy.Conn{ID: policy.NewID(), Listener: l.lc.Name, Remote: remote, Local: local, Started: time.Now(), TLS: tlsState, Closed: c.ctx.Done()}
	c.log = s.log.With("conn", c.pc.ID, "listener", l.lc.Name, "remote", remote.String())
	if !s.register(c) {
		s.connected(l.lc.Name, false)
		c.Close()
		return
	}
	if s.cfg.Resolver != nil {
		c.pc.ReverseName = reverseName(ctx, s.cfg.Resolver, ip)
	}
	c.log.Info("connect", "rdns", c.pc.ReverseName, "tls", c.pc.TLS != nil)
	res := s.cfg.Chain.EvalConnect(ctx, c.pc)
	if !res.Accepted() {
		s.connected(l.lc.Name, false)
		c.log.Info("connection refused by rule", "rule", res.Rule, "reply", res.Reply.String())
		c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Conn.Write([]byte(greetingDeny(res.Reply)))
		c.Close()
		return
	}
	if res.Reply != policy.DefaultReply(policy.StageConnect) {
		// An Info or Accept reply is the text of the greeting, after our
		// name (RFC 5321 section 4.2).
		c.greetText = []byte("220 " + s.cfg.Hostname + " " + replyText(res.Reply, "ESMTP ready") + "\r\n")
	}
	c.startSession(l.lc.Name)
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
	case <-c.ctx.Done():
		c.Close()
	}
}

// greetingDeny formats a refused greeting. RFC 5321 allows only 554 and 421
// here: a temporary refusal becomes 421, a permanent one 554.
func greetingDeny(r policy.Reply) string {
	code, enh := 554, r.Enhanced
	if r.Temporary() {
		code = 421
		if enh == "" {
			enh = "4.3.0"
		}
	} else if enh == "" {
		enh = "5.7.1"
	}
	text := sanitizeText(r.Text)
	if text == "" {
		text = "Service unavailable"
	}
	return strconv.Itoa(code) + " " + enh + " " + text + "\r\n"
}

// sanitizeText makes a reply text one safe line.
func sanitizeText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// reverseName returns the forward-confirmed reverse DNS name of ip, or "".
func reverseName(ctx context.Context, r Resolver, ip netip.Addr) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	names, err := r.LookupAddr(ctx, ip.String())
	if err != nil {
		return ""
	}
	for i, name := range names {
		if i == 5 {
			break
		}
		addrs, err := r.LookupIPAddr(ctx, name)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ap, ok := netip.AddrFromSlice(a.IP); ok && ap.Unmap() == ip {
				n := strings.TrimSuffix(strings.ToLower(name), ".")
				if n != "" && SanitizeHelo(n) == n {
					return n
				}
			}
		}
	}
	return ""
}

// conn is the connection go-smtp serves. It lives as long as the TCP
// connection, so it holds what is known of the client outside go-smtp's
// session. go-smtp finds it through Conn.Conn().
//
// Every byte go-smtp reads or writes passes through it in plaintext: the
// TLS of an implicit TLS listener lies below it, and so does the TLS of
// STARTTLS, which conn does itself (see input.go). So conn sees every
// command line before go-smtp does and every reply go-smtp writes: it
// counts error replies for MaxErrors, tells HELO from EHLO, and replaces
// go-smtp's fixed positive replies by the chain's (see output.go).
type conn struct {
	net.Conn
	srv    *Server
	ip     netip.Addr
	pc     *policy.Conn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	// keepCtx is ctx without its cancellation, for Enqueue: a message
	// being stored is finished even if the client goes. Made once here
	// rather than per message.
	keepCtx context.Context

	closeOnce sync.Once

	// spool holds the message being received when it outgrows the
	// spooler's buffer (see spooler): one file per connection, created
	// for its first such message, unlinked at once (nothing is left
	// behind, even after a crash) and reused for its later ones, because
	// creating and removing a file per message costs more than the rest
	// of the accept path on some filesystems. A message is written over
	// the previous one and read back within its own size, so the file is
	// truncated only after a large message (see spoolFile). Nil until
	// needed: most mail fits in the buffer, and most connections carry
	// one message.
	spool *os.File
	// spoolHigh is the size of the largest message written to spool
	// since it was last truncated.
	spoolHigh int64

	// ahead holds bytes read from the socket that go-smtp has not asked
	// for yet, in ahead[aheadPos:aheadEnd], and aheadErr the error of
	// the read that got them; nil when there are none (see Read). Only
	// the goroutine that reads uses them.
	ahead              *[]byte
	aheadPos, aheadEnd int
	aheadErr           error
	// streaming: the last socket read filled its buffer, so more is
	// likely waiting (a message body), and the next read reads ahead.
	streaming bool

	// The input filter and the reply rewriting (input.go, output.go),
	// used only by go-smtp's goroutine of the connection.
	tc         *tls.Conn // the TLS of STARTTLS, between the socket and us
	tlsPending bool      // STARTTLS was answered: the next Read makes the handshake
	needHelo   bool      // after STARTTLS, until the client's EHLO
	greeting   bool      // the command go-smtp handles is HELO or EHLO
	inTx       bool      // the session has a transaction (MAIL accepted)
	cont       bool      // the last reply was 334: the next line answers AUTH
	body       bool      // between a 354 and the end of the message
	bodyState  int       // go-smtp's data reader state (see bodyEnd)
	chunk      int64     // bytes of a BDAT chunk go-smtp has yet to read
	longLine   bool      // handing over the rest of a line too long to filter
	pending    []byte    // the rest of a rewritten line go-smtp has not taken
	rerr       error     // the error of the last read, for after pending
	helloText  []byte    // a helo rule's reply text, for the next HELO/EHLO reply

	mu         sync.Mutex
	inData     bool
	stopping   bool // Shutdown: close once the current message is done
	closeAfter bool // close after the next write (the reply that ends it)
	timedOut   bool
	errors     int
	greeted    bool
	esmtp      bool
	lineStart  bool
	head       []byte // first bytes of the reply line being written
	// replace is written instead of go-smtp's next reply, a one-line 2xx
	// (see Write); greetText replaces the text of the greeting.
	replace   []byte
	greetText []byte
	// session: the client was admitted and Events told so (Connected);
	// closed: Close ran. See startSession.
	session, closed bool
}

func newConn(s *Server, raw net.Conn, ip netip.Addr) *conn {
	c := &conn{Conn: raw, srv: s, ip: ip, lineStart: true, esmtp: true}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	c.keepCtx = context.WithoutCancel(c.ctx)
	return c
}

// spoolTruncateAbove is the size of spool file left in place between
// messages: a truncate per message costs kernel time (freeing pages, then
// allocating them again), and a small leftover costs nothing.
const spoolTruncateAbove = 1 << 20

// noteSpooled records that a message of size bytes was written to the
// spool file.
func (c *conn) noteSpooled(size int64) {
	c.mu.Lock()
	c.spoolHigh = max(c.spoolHigh, size)
	c.mu.Unlock()
}

// newSpoolFile creates a spool file in dir, unlinked at once: nothing is
// left behind, even after a crash.
func newSpoolFile(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "mtakit-spool-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// spoolFile returns the connection's spool file, to be written from offset
// 0 with WriteAt (no seek per message: a system call saved). It may hold
// the end of an earlier message past what is written now: readers go by
// the size written (policy.NewMessage).
func (c *conn) spoolFile() (*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.spool == nil {
		f, err := newSpoolFile(c.srv.cfg.SpoolDir)
		if err != nil {
			return nil, err
		}
		c.spool = f
		return f, nil
	}
	if c.spoolHigh > spoolTruncateAbove {
		if err := c.spool.Truncate(0); err != nil {
			return nil, err
		}
		c.spoolHigh = 0
	}
	return c.spool, nil
}

// Close closes the connection and frees its slot; it is idempotent.
func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.cancel()
		c.mu.Lock()
		if c.spool != nil {
			c.spool.Close()
		}
		c.closed = true
		session := c.session
		c.mu.Unlock()
		if session {
			c.srv.cfg.Events.Disconnected(c.pc.Listener)
		}
		c.srv.unregister(c)
		c.srv.release(c.ip)
		if c.log != nil {
			c.log.Debug("disconnect")
		}
	})
	return err
}

// shutdown closes c now if it is idle, or once its message is done.
func (c *conn) shutdown() {
	c.mu.Lock()
	c.stopping = true
	busy := c.inData
	c.mu.Unlock()
	if !busy {
		c.Close()
	}
}

// beginData marks c as receiving a message; false when the server is
// shutting down.
func (c *conn) beginData() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping {
		return false
	}
	c.inData = true
	return true
}

// endData ends the message; when the server is shutting down, the
// connection closes after the reply to DATA.
func (c *conn) endData() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData = false
	if c.stopping {
		c.closeAfter = true
	}
}

// isTimeout reports whether err is a net.Error that timed out. It is a
// function of its own so that the net.Error errors.As needs (which escapes)
// is allocated only when there is an error, not on every Read.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dead reports whether the connection timed out or was closed.
func (c *conn) dead() bool {
	if c.ctx.Err() != nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timedOut
}

// scan looks at reply lines as go-smtp writes them. It reports whether
// the connection must close (the error limit was reached, and 421 sent).
func (c *conn) scan(p []byte) bool {
	for _, b := range p {
		if c.lineStart {
			c.head = c.head[:0]
			c.lineStart = false
		}
		if b == '\n' {
			c.lineStart = true
			if c.reply(string(c.head)) {
				return true
			}
			continue
		}
		if len(c.head) < 16 {
			c.head = append(c.head, b)
		}
	}
	return false
}

// reply handles the start of one reply line; true means close.
func (c *conn) reply(h string) bool {
	if len(h) < 4 {
		return false
	}
	code, sep := h[:3], h[3]
	if sep == ' ' {
		c.cont = false
	}
	switch {
	case code == "220" && sep == ' ':
		c.greeted = true
	case code == "354" && sep == ' ':
		c.body, c.bodyState = true, bodyBeginLine // the message follows
	case code == "334" && sep == ' ':
		c.cont = true // the next line answers AUTH's challenge
		return false
	case (h[0] == '4' || h[0] == '5') && sep == ' ':
		if strings.HasPrefix(h, "452 4.5.3") || strings.HasPrefix(h, "421") {
			return false
		}
		return c.countError()
	}
	return false
}

// countError counts one error reply; at the limit it writes 421 and reports
// that the connection must close. Called with c.mu held.
func (c *conn) countError() bool {
	c.errors++
	if max := c.srv.limits.MaxErrors; max <= 0 || c.errors < max {
		return false
	}
	c.log.Warn("too many errors; disconnecting", "errors", c.errors)
	c.wire().Write([]byte("421 4.7.0 Too many errors, closing connection\r\n"))
	return true
}

func (c *conn) resetErrors() {
	c.mu.Lock()
	c.errors = 0
	c.mu.Unlock()
}

func (c *conn) isESMTP() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.esmtp
}
