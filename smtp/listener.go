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
		if err := tc.HandshakeContext(ctx); err != nil {
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
	c.pc = &policy.Conn{ID: policy.NewID(), Listener: l.lc.Name, Remote: remote, Local: local, Started: time.Now(), TLS: tlsState}
	c.log = s.log.With("conn", c.pc.ID, "listener", l.lc.Name, "remote", remote.String())
	if !s.register(c) {
		c.Close()
		return
	}
	if s.cfg.Resolver != nil {
		c.pc.ReverseName = reverseName(ctx, s.cfg.Resolver, ip)
	}
	c.log.Info("connect", "rdns", c.pc.ReverseName, "tls", c.pc.TLS != nil)
	res := s.cfg.Chain.EvalConnect(ctx, c.pc)
	if !res.Accepted() {
		c.log.Info("connection refused by rule", "rule", res.Rule, "reply", res.Reply.String())
		c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Conn.Write([]byte(greetingDeny(res.Reply)))
		c.Close()
		return
	}
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
// sessions (which are recreated after STARTTLS). go-smtp finds it through
// Conn.Conn(), unwrapping the *tls.Conn it creates at STARTTLS.
//
// While go-smtp writes plaintext through it (before STARTTLS, and always on
// an implicit TLS listener, whose TLS lies below), conn reads the replies
// go-smtp writes: it counts error replies for MaxErrors and tells HELO from
// EHLO. After STARTTLS the session counts the errors it returns itself.
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

	mu         sync.Mutex
	inData     bool
	stopping   bool // Shutdown: close once the current message is done
	closeAfter bool // close after the next write (the reply that ends it)
	timedOut   bool
	errors     int
	sniff      bool // go-smtp writes plaintext through us
	greeted    bool
	esmtp      bool
	lineStart  bool
	head       []byte // first bytes of the reply line being written
}

func newConn(s *Server, raw net.Conn, ip netip.Addr) *conn {
	c := &conn{Conn: raw, srv: s, ip: ip, sniff: true, lineStart: true, esmtp: true}
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
		c.mu.Unlock()
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

// readAheadSize is what Read asks the socket for at once.
const readAheadSize = 32 << 10

// readAheadBufs lends Read its buffers: a connection holds one only while
// it reads ahead or has bytes go-smtp has not taken yet. A read that may
// wait for the client (the next command) goes straight into go-smtp's
// buffer, so an idle connection holds none.
var readAheadBufs = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

// Read reads ahead: go-smtp reads through a 4 KiB bufio.Reader, which
// would make a system call (and often a trip through the poller) per 4
// KiB of message. Read asks the socket for up to readAheadSize bytes and
// serves the next reads from what it got, so go-smtp and everything below
// it (a TLS handshake after STARTTLS included) sees the same bytes in the
// same order, with fewer system calls.
func (c *conn) Read(p []byte) (int, error) {
	if c.ahead != nil {
		n := copy(p, (*c.ahead)[c.aheadPos:c.aheadEnd])
		c.aheadPos += n
		if c.aheadPos < c.aheadEnd {
			return n, nil
		}
		err := c.aheadErr
		readAheadBufs.Put(c.ahead)
		c.ahead, c.aheadErr = nil, nil
		return n, err
	}
	if len(p) >= readAheadSize/2 || !c.streaming {
		n, err := c.read(p)
		c.streaming = n == len(p)
		return n, err
	}
	bp := readAheadBufs.Get().(*[]byte)
	got, err := c.read(*bp)
	c.streaming = got == len(*bp)
	n := copy(p, (*bp)[:got])
	if n < got {
		c.ahead, c.aheadPos, c.aheadEnd, c.aheadErr = bp, n, got, err
		return n, nil
	}
	readAheadBufs.Put(bp)
	return n, err
}

// read ends the connection when a read times out. go-smtp reads commands
// through bufio.Reader.ReadLine, which returns a partial line with a nil
// error when the deadline strikes mid-line; go-smtp would run that partial
// command and go on. So a timeout is final: 421 4.4.2 (when go-smtp talks
// plaintext through us) and close; the session refuses whatever go-smtp
// still hands it (see dead).
func (c *conn) read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && isTimeout(err) {
		c.mu.Lock()
		c.timedOut = true
		sniff := c.sniff
		c.mu.Unlock()
		c.log.Info("timeout; disconnecting")
		if sniff {
			c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			c.Conn.Write([]byte("421 4.4.2 Timeout, closing connection\r\n"))
		}
		c.Close()
	}
	return n, err
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

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	closeNow := c.closeAfter
	if c.sniff && err == nil {
		if c.scan(p) {
			closeNow = true
		}
	}
	c.mu.Unlock()
	if closeNow {
		c.Close()
	}
	return n, err
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
	switch {
	case code == "220" && sep == ' ':
		if c.greeted {
			// "220 Ready to start TLS": what follows is TLS.
			c.sniff = false
		}
		c.greeted = true
	case code == "250" && sep == '-' && strings.HasPrefix(h[4:], "Hello"):
		c.esmtp = true // EHLO: "250-Hello name", then the extensions
	case code == "250" && sep == ' ' && strings.HasPrefix(h[4:], "2.0.0 Hello"):
		c.esmtp = false // HELO: one line "250 2.0.0 Hello name"
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
	if !c.overErrorLimit() {
		return false
	}
	c.Conn.Write([]byte("421 4.7.0 Too many errors, closing connection\r\n"))
	return true
}

// overErrorLimit counts one error and reports whether MaxErrors is reached.
// Called with c.mu held.
func (c *conn) overErrorLimit() bool {
	c.errors++
	if max := c.srv.limits.MaxErrors; max > 0 && c.errors >= max {
		c.log.Warn("too many errors; disconnecting", "errors", c.errors)
		return true
	}
	return false
}

// sessionError counts an error the session returns when the replies are
// not visible to scan (after STARTTLS). At the limit it replaces err by 421
// and closes the connection after it is written.
func (c *conn) sessionError(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sniff {
		return err // scan counts it when written
	}
	if c.overErrorLimit() {
		c.closeAfter = true
		return errTooManyErrors
	}
	return err
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
