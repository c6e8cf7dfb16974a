package smtp

import (
	"bytes"
	"crypto/tls"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What go-smtp reads. conn hands go-smtp the client's bytes through a
// filter that knows where the commands are: one command line per Read (so
// that go-smtp's own buffer never holds a command the filter has not seen
// in its turn), the body after a 354 and a BDAT chunk in bulk, each up to
// its exact end. (The session reads a DATA body itself, through
// bodyReader, body.go; go-smtp then reads only an end-of-data line.) It answers what go-smtp would get wrong: a bare
// "RCPT TO:<postmaster>" (which go-smtp refuses with 501) is handed over as
// postmaster@Config.PostmasterDomain, and STARTTLS is done here, below
// go-smtp, so that everything go-smtp writes, before and after STARTTLS,
// passes through Write in plaintext (see output.go).
//
// Everything here runs on go-smtp's goroutine of the connection: go-smtp
// reads commands and writes their replies on one goroutine, so the state
// of the filter needs no lock.

// readAheadSize is what Read asks the socket for at once.
const readAheadSize = 32 << 10

// readAheadBufs lends Read its buffers: a connection holds one only while
// it reads ahead or has bytes go-smtp has not taken yet. A read that may
// wait for the client (the next command) goes straight into go-smtp's
// buffer, so an idle connection holds none.
var readAheadBufs = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

// Replies the filter substitutes for go-smtp's. A command the filter
// answers itself reaches go-smtp as NOOP (or RSET), whose one-line 250 is
// replaced by the filter's reply as it is written, so replies stay in the
// order of the commands.
var (
	cmdNOOP          = []byte("NOOP\r\n")
	cmdRSET          = []byte("RSET\r\n")
	cmdSTARTTLS      = []byte("STARTTLS\r\n")
	replyTLSReady    = []byte("220 2.0.0 Ready to start TLS\r\n")
	replyTLSParam    = []byte("501 5.5.4 Syntax: STARTTLS takes no parameters\r\n")
	replyTLSAgain    = []byte("502 5.5.1 Already running in TLS\r\n")
	replyTLSAfterAut = []byte("503 5.5.1 STARTTLS not allowed after AUTH\r\n")
	replyTLSInTx     = []byte("503 5.5.1 STARTTLS not allowed during a mail transaction\r\n")
	replyUnknownCmd  = []byte("500 5.5.2 Syntax error, command unrecognized\r\n")
)

// Read hands go-smtp the next command line, or body or chunk bytes.
//
// Bytes are read ahead: go-smtp reads through a 4 KiB bufio.Reader, which
// would make a system call (and often a trip through the poller) per 4
// KiB of message. A body is read up to readAheadSize bytes at once and the
// next reads are served from what was got, so go-smtp sees the same bytes
// in the same order with fewer system calls.
func (c *conn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if c.rerr != nil {
		err := c.rerr
		c.rerr = nil
		return 0, err
	}
	if c.tlsPending {
		if err := c.startTLS(); err != nil {
			return 0, err
		}
	}
	switch {
	case c.chunk > 0:
		if int64(len(p)) > c.chunk {
			p = p[:c.chunk]
		}
		n, err := c.readRaw(p)
		c.chunk -= int64(n)
		return n, err
	case c.body:
		n, err := c.readRaw(p)
		if end := c.bodyEnd(p[:n]); end >= 0 {
			c.body = false
			if end < n {
				c.unread(p[end:n], err)
				return end, nil
			}
		}
		return n, err
	case c.longLine:
		n, err := c.readRaw(p)
		if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
			c.longLine = false
			if i+1 < n {
				c.unread(p[i+1:n], err)
				return i + 1, nil
			}
		}
		return n, err
	}
	return c.readCommand(p)
}

// readRaw reads bytes as they come, from the read-ahead buffer first.
func (c *conn) readRaw(p []byte) (int, error) {
	if c.ahead != nil {
		n := copy(p, (*c.ahead)[c.aheadPos:c.aheadEnd])
		c.aheadPos += n
		if c.aheadPos < c.aheadEnd {
			return n, nil
		}
		err := c.aheadErr
		c.releaseAhead()
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

func (c *conn) releaseAhead() {
	if len(*c.ahead) == readAheadSize {
		readAheadBufs.Put(c.ahead)
	}
	c.ahead, c.aheadPos, c.aheadEnd, c.aheadErr = nil, 0, 0, nil
}

// unread puts b, the end of what readRaw just returned, back in front of
// the input, with err, the error of the read that got it.
func (c *conn) unread(b []byte, err error) {
	if c.ahead != nil {
		// b was the end of what was taken from the buffer.
		c.aheadPos -= len(b)
		return
	}
	bp := readAheadBufs.Get().(*[]byte)
	if len(b) > len(*bp) {
		readAheadBufs.Put(bp)
		nb := make([]byte, len(b))
		bp = &nb
	}
	n := copy(*bp, b)
	c.ahead, c.aheadPos, c.aheadEnd, c.aheadErr = bp, 0, n, err
}

// readCommand hands over one command line (or an AUTH response line).
func (c *conn) readCommand(p []byte) (int, error) {
	if c.ahead == nil {
		// The common case: the read brings exactly one line, nothing after
		// it (so nothing to discard). No buffer of ours is involved.
		n, err := c.read(p)
		c.streaming = n == len(p)
		if n == 0 {
			return 0, err
		}
		if i := bytes.IndexByte(p[:n], '\n'); i == n-1 {
			out, _ := c.command(p[:n])
			return c.handOver(p, out, err)
		}
		c.unread(p[:n], err)
	}
	for {
		buf := (*c.ahead)[c.aheadPos:c.aheadEnd]
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line := buf[:i+1]
			c.aheadPos += i + 1
			out, discard := c.command(line)
			if discard && c.aheadPos < c.aheadEnd {
				// Plaintext after STARTTLS in the same packet (the command
				// injection of CVE-2011-0411) never reaches go-smtp.
				c.log.Info("starttls: discarding plaintext sent before the handshake", "bytes", c.aheadEnd-c.aheadPos)
				c.aheadPos = c.aheadEnd
			}
			if c.aheadPos < c.aheadEnd {
				return c.handOver(p, out, nil)
			}
			err := c.aheadErr
			c.releaseAhead()
			return c.handOver(p, out, err)
		}
		if c.aheadErr != nil || len(buf) >= c.maxLine() {
			// No complete line will come (the client is gone), or the line
			// is too long to be a command: hand it over as it is, and
			// go-smtp answers it (500 5.4.0 for a long line).
			c.longLine = c.aheadErr == nil
			return c.readRaw(p)
		}
		if c.aheadPos > 0 {
			c.aheadEnd = copy(*c.ahead, buf)
			c.aheadPos = 0
		}
		m, err := c.read((*c.ahead)[c.aheadEnd:])
		c.aheadEnd += m
		c.aheadErr = err
	}
}

// handOver gives go-smtp out, what command made of a line, in p; what does
// not fit waits in pending, and err, the error of the read that ended the
// line, waits after it.
func (c *conn) handOver(p, out []byte, err error) (int, error) {
	n := copy(p, out)
	if n < len(out) {
		c.pending = append([]byte(nil), out[n:]...)
		c.rerr = err
		return n, nil
	}
	return n, err
}

// maxLine is the longest command line the filter buffers whole.
func (c *conn) maxLine() int {
	n := len(*c.ahead)
	if c.srv != nil && c.srv.limits.MaxLineLength > 0 {
		n = min(n, c.srv.limits.MaxLineLength)
	}
	return n
}

// command looks at a line go-smtp is about to read as a command and
// returns what go-smtp gets instead (line itself, most often). discard
// means that whatever the client sent after line must be dropped.
func (c *conn) command(line []byte) (out []byte, discard bool) {
	c.greeting = false
	if c.cont {
		return line, false // a response to AUTH's 334, not a command
	}
	switch {
	case hasPrefixFold(line, "STARTTLS"):
		// go-smtp takes any line starting with STARTTLS for STARTTLS.
		return c.starttls(trimEOL(line[len("STARTTLS"):]))
	case hasPrefixFold(line, "RCPT "):
		return c.rcpt(line), false
	case hasPrefixFold(line, "BDAT "):
		c.chunk = bdatSize(trimEOL(line[len("BDAT "):]))
	case hasPrefixFold(line, "EHLO "), hasPrefixFold(line, "HELO "):
		c.greeting = true
	}
	return line, false
}

// starttls answers STARTTLS; rest is what follows the keyword.
func (c *conn) starttls(rest []byte) ([]byte, bool) {
	switch {
	case len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t':
		c.setReply(replyUnknownCmd) // "STARTTLSX"
		return cmdNOOP, false
	case len(bytes.TrimSpace(rest)) > 0:
		// RFC 3207 section 4: STARTTLS takes no parameters.
		c.setReply(replyTLSParam)
		return cmdNOOP, false
	case c.srv == nil || c.srv.tls == nil || c.pc == nil:
		return cmdSTARTTLS, false // go-smtp: 502 TLS not supported
	case c.pc.TLS != nil:
		c.setReply(replyTLSAgain)
		return cmdNOOP, false
	case c.pc.Authenticated():
		// The identity would be forgotten at the handshake (RFC 3207
		// section 4.2) while go-smtp refuses a second AUTH.
		c.setReply(replyTLSAfterAut)
		return cmdNOOP, false
	case c.inTx:
		// As Postfix: a transaction (a BDAT transfer, whose receiving
		// goroutine may still run) never straddles the handshake.
		c.setReply(replyTLSInTx)
		return cmdNOOP, false
	}
	// go-smtp gets RSET, which resets its state as its own STARTTLS
	// would; its 250 becomes the 220, and the next Read makes the
	// handshake.
	c.setReply(replyTLSReady)
	c.tlsPending = true
	return cmdRSET, true
}

// rcpt hands go-smtp a bare "RCPT TO:<postmaster>" (RFC 5321 section 4.5.1:
// it must be accepted, without a domain, case-insensitively) as
// "RCPT TO:<postmaster@PostmasterDomain>"; any other RCPT line as it is.
// It parses as go-smtp does: "RCPT", one character, then the argument with
// spaces around it trimmed.
func (c *conn) rcpt(line []byte) []byte {
	if c.srv == nil || c.srv.postmaster == "" || !hasPrefixFold(line, "RCPT ") {
		return line
	}
	arg := bytes.TrimSpace(trimEOL(line[len("RCPT "):]))
	if !hasPrefixFold(arg, "TO:") {
		return line
	}
	arg = bytes.TrimSpace(arg[len("TO:"):])
	const bare = "<postmaster>"
	if !hasPrefixFold(arg, bare) || len(arg) > len(bare) && arg[len(bare)] != ' ' {
		return line
	}
	out := make([]byte, 0, len(line)+len(c.srv.postmaster))
	out = append(out, "RCPT TO:<postmaster@"...)
	out = append(out, c.srv.postmaster...)
	out = append(out, '>')
	out = append(out, arg[len(bare):]...)
	return append(out, "\r\n"...)
}

// bdatSize is the size of the chunk that follows a BDAT command with
// argument arg, parsed as go-smtp parses it; 0 when go-smtp refuses the
// command without reading a chunk.
func bdatSize(arg []byte) int64 {
	f := strings.Fields(string(arg))
	if len(f) == 0 || len(f) > 2 || len(f) == 2 && !strings.EqualFold(f[1], "LAST") {
		return 0
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0
	}
	return int64(n)
}

// The states of go-smtp's data reader (data.go), which bodyEnd follows
// byte for byte: the end of the body must be where go-smtp finds it.
const (
	bodyBeginLine = iota
	bodyDot
	bodyDotCR
	bodyCR
	bodyData
)

// bodyEnd advances the body's state over b and returns the index just past
// the end-of-data line, or -1 if b does not hold it.
func (c *conn) bodyEnd(b []byte) int {
	st := c.bodyState
	for i := 0; i < len(b); i++ {
		if st == bodyData {
			// Only a CR matters here: skip to it at memchr speed.
			j := bytes.IndexByte(b[i:], '\r')
			if j < 0 {
				break
			}
			i += j
		}
		switch ch := b[i]; st {
		case bodyBeginLine:
			switch ch {
			case '.':
				st = bodyDot
			case '\r':
				st = bodyCR
			default:
				st = bodyData
			}
		case bodyDot:
			if ch == '\r' {
				st = bodyDotCR
			} else {
				st = bodyData
			}
		case bodyDotCR:
			if ch == '\n' {
				c.bodyState = bodyBeginLine
				return i + 1
			}
			st = bodyData
		case bodyCR:
			if ch == '\n' {
				st = bodyBeginLine
			} else {
				st = bodyData
			}
		case bodyData:
			if ch == '\r' {
				st = bodyCR
			}
		}
	}
	c.bodyState = st
	return -1
}

// startTLS makes the STARTTLS handshake below go-smtp and forgets what the
// client said before it (RFC 3207 section 4.2): the helo rules run again at
// the next EHLO, which the session requires before MAIL and AUTH.
func (c *conn) startTLS() error {
	c.tlsPending = false
	tc := tls.Server(c.Conn, c.srv.tls)
	c.Conn.SetDeadline(time.Now().Add(c.srv.limits.CommandTimeout))
	err := tc.HandshakeContext(c.ctx)
	c.srv.tlsHandshake(c.pc.Listener, err)
	if err != nil {
		c.log.Info("TLS handshake failed", "error", err)
		c.Close()
		return io.EOF // go-smtp ends the connection quietly
	}
	c.Conn.SetDeadline(time.Time{})
	c.Conn.SetReadDeadline(time.Now().Add(c.srv.limits.CommandTimeout))
	st := tc.ConnectionState()
	c.tc = tc
	c.pc.ResetTLS(&st)
	c.needHelo = true
	c.log.Info("starttls", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite))
	return nil
}

// trimEOL cuts the CR and LF characters at the end of line, as go-smtp
// does.
func trimEOL(line []byte) []byte {
	return bytes.TrimRight(line, "\r\n")
}

// hasPrefixFold reports whether b starts with the ASCII prefix, ignoring
// case.
func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		x, y := b[i], prefix[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// read ends the connection when a read times out. go-smtp reads commands
// through bufio.Reader.ReadLine, which returns a partial line with a nil
// error when the deadline strikes mid-line; go-smtp would run that partial
// command and go on. So a timeout is final: 421 4.4.2 and close; the
// session refuses whatever go-smtp still hands it (see dead).
func (c *conn) read(p []byte) (int, error) {
	n, err := c.wire().Read(p)
	if err != nil && isTimeout(err) {
		c.mu.Lock()
		c.timedOut = true
		c.mu.Unlock()
		c.log.Info("timeout; disconnecting")
		c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.wire().Write([]byte("421 4.4.2 Timeout, closing connection\r\n"))
		c.Close()
	}
	return n, err
}
