package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// A small SMTP/LMTP client over a net.Conn. go-smtp's client cannot do
// opportunistic STARTTLS on one connection, takes no context, forces
// BODY=8BITMIME, collapses duplicate LMTP recipients into a map and lets
// bare CR through its dot-writer; this one does what a delivery agent
// needs and nothing else.

const (
	maxReplyLine  = 2000 // RFC 5321 4.5.3.1.5 allows 512; be lenient
	maxReplyLines = 200
)

// errProtocol marks a reply that is not SMTP.
var errProtocol = errors.New("relay: malformed reply")

// reply is one SMTP reply as read from a server.
type reply struct {
	Code     int
	Enhanced string
	Lines    []string // text of each line, without code and separator
}

// text returns the reply text without its enhanced code (first line, with
// following lines joined by "; ").
func (r reply) text() string {
	var parts []string
	for i, l := range r.Lines {
		if i == 0 && r.Enhanced != "" {
			l = strings.TrimSpace(strings.TrimPrefix(l, r.Enhanced))
		}
		if l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// policyReply converts r into a policy.Reply, supplying a default enhanced
// code of the right class when the server gave none.
func (r reply) policyReply() policy.Reply {
	enh := r.Enhanced
	if enh == "" {
		enh = fmt.Sprintf("%d.0.0", r.Code/100)
	}
	return policy.Reply{Code: r.Code, Enhanced: enh, Text: r.text()}
}

// parseReplyLine splits one reply line into its code, whether more lines
// follow, and its text.
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", errProtocol
	}
	for i := 0; i < 3; i++ {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", errProtocol
		}
	}
	code, _ = strconv.Atoi(line[:3])
	if code < 200 || code > 599 {
		return 0, false, "", errProtocol
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	switch line[3] {
	case '-':
		more = true
	case ' ':
	default:
		return 0, false, "", errProtocol
	}
	return code, more, line[4:], nil
}

// parseEnhanced returns the RFC 3463 code at the start of text when its
// class matches the reply code's first digit, or "".
func parseEnhanced(code int, text string) string {
	f, _, _ := strings.Cut(text, " ")
	parts := strings.Split(f, ".")
	if len(parts) != 3 {
		return ""
	}
	if parts[0] != strconv.Itoa(code/100) {
		return ""
	}
	for i, p := range parts {
		if p == "" || len(p) > 3 || (i == 1 && len(p) > 3) {
			return ""
		}
		for j := 0; j < len(p); j++ {
			if p[j] < '0' || p[j] > '9' {
				return ""
			}
		}
	}
	return f
}

// readReply reads one (possibly multiline) reply from br.
func readReply(br *bufio.Reader) (reply, error) {
	var r reply
	for {
		line, err := readLine(br)
		if err != nil {
			return r, err
		}
		code, more, text, err := parseReplyLine(line)
		if err != nil {
			return r, fmt.Errorf("%w: %q", err, line)
		}
		if r.Code == 0 {
			r.Code = code
			r.Enhanced = parseEnhanced(code, text)
		} else if code != r.Code {
			return r, fmt.Errorf("%w: code changed within a multiline reply", errProtocol)
		}
		if r.Enhanced != "" && len(r.Lines) > 0 {
			text = strings.TrimSpace(strings.TrimPrefix(text, r.Enhanced))
		}
		r.Lines = append(r.Lines, text)
		if !more {
			return r, nil
		}
		if len(r.Lines) >= maxReplyLines {
			return r, fmt.Errorf("%w: too many lines", errProtocol)
		}
	}
}

// readLine reads one line ending in LF (CRLF tolerated), at most
// maxReplyLine bytes.
func readLine(br *bufio.Reader) (string, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxReplyLine {
			return "", fmt.Errorf("%w: line too long", errProtocol)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		s := strings.TrimSuffix(string(buf), "\n")
		return strings.TrimSuffix(s, "\r"), nil
	}
}

// client is one SMTP or LMTP session.
type client struct {
	conn     net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lmtp     bool
	ext      map[string]string // EHLO keywords (upper case) -> parameters
	tls      bool
	stop     func() bool // releases the context watcher
	ctx      context.Context
	timeouts Timeouts
}

// newClient wraps conn; ctx's end closes the connection, so every blocked
// read or write returns.
func newClient(ctx context.Context, conn net.Conn, lmtp bool, t Timeouts) *client {
	c := &client{conn: conn, lmtp: lmtp, ctx: ctx, timeouts: t.withDefaults()}
	c.setConn(conn)
	c.stop = context.AfterFunc(ctx, func() { conn.Close() })
	return c
}

func (c *client) setConn(conn net.Conn) {
	c.conn = conn
	c.br = bufio.NewReaderSize(conn, 4096)
	c.bw = bufio.NewWriterSize(conn, 32<<10)
}

// close ends the session without QUIT.
func (c *client) close() {
	c.stop()
	c.conn.Close()
}

// quit says QUIT (briefly waiting for the reply) and closes.
func (c *client) quit() {
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if c.writeLine("QUIT") == nil {
		readReply(c.br)
	}
	c.close()
}

// deadline sets the connection's deadline to d from now, or earlier when
// the context ends sooner.
func (c *client) deadline(d time.Duration) {
	t := time.Now().Add(d)
	if dl, ok := c.ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	c.conn.SetDeadline(t)
}

func (c *client) writeLine(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("relay: CR or LF in command %q", line)
	}
	if _, err := c.bw.WriteString(line + "\r\n"); err != nil {
		return err
	}
	return c.bw.Flush()
}

// cmd sends one command and reads its reply within timeout.
func (c *client) cmd(timeout time.Duration, line string) (reply, error) {
	c.deadline(timeout)
	if err := c.writeLine(line); err != nil {
		return reply{}, c.wrap(err)
	}
	r, err := readReply(c.br)
	return r, c.wrap(err)
}

// wrap reports the context's error instead of the "use of closed
// connection" its end caused.
func (c *client) wrap(err error) error {
	if err != nil && c.ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", c.ctx.Err(), err)
	}
	return err
}

// greet reads the greeting.
func (c *client) greet() (reply, error) {
	c.deadline(c.timeouts.Greeting)
	r, err := readReply(c.br)
	return r, c.wrap(err)
}

// hello sends EHLO (LHLO for LMTP), falling back to HELO when EHLO is
// refused with 500/502 (never for LMTP), and records the extensions.
func (c *client) hello(name string) (reply, error) {
	verb := "EHLO"
	if c.lmtp {
		verb = "LHLO"
	}
	r, err := c.cmd(c.timeouts.Command, verb+" "+name)
	if err != nil {
		return r, err
	}
	c.ext = map[string]string{}
	if r.Code == 250 {
		for _, l := range r.Lines[1:] {
			k, v, _ := strings.Cut(l, " ")
			c.ext[strings.ToUpper(k)] = v
		}
		return r, nil
	}
	if !c.lmtp && (r.Code == 500 || r.Code == 502) {
		return c.cmd(c.timeouts.Command, "HELO "+name)
	}
	return r, nil
}

func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// startTLS runs STARTTLS and the handshake. A non-220 reply is returned
// with a nil error; a failed handshake as an error.
func (c *client) startTLS(cfg *tls.Config) (reply, error) {
	r, err := c.cmd(c.timeouts.Command, "STARTTLS")
	if err != nil || r.Code != 220 {
		return r, err
	}
	tc := tls.Client(c.conn, cfg)
	c.deadline(c.timeouts.Command)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return r, fmt.Errorf("relay: TLS handshake: %w", err)
	}
	c.setConn(tc)
	c.tls = true
	c.ext = nil
	return r, nil
}

// authPlain runs AUTH PLAIN with an initial response (RFC 4954, RFC 4616).
func (c *client) authPlain(user, pass string) (reply, error) {
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	c.deadline(c.timeouts.Command)
	if err := c.writeLine("AUTH PLAIN " + resp); err != nil {
		return reply{}, c.wrap(err)
	}
	r, err := readReply(c.br)
	if err == nil && r.Code == 334 {
		// A server that ignores the initial response: send it again.
		return c.cmd(c.timeouts.Command, resp)
	}
	return r, c.wrap(err)
}

// data sends DATA, the message from src dot-stuffed with CRLF line ends,
// and the final dot. It returns the reply to DATA when it was not 354
// (msgSent false), or after the dot with the first reply read
// (SMTP: the only one; LMTP: the first recipient's).
func (c *client) data(src io.Reader) (r reply, msgSent bool, err error) {
	r, err = c.cmd(c.timeouts.DataInit, "DATA")
	if err != nil || r.Code != 354 {
		return r, false, err
	}
	w := &deadlineWriter{c: c, d: c.timeouts.DataBlock}
	dw := newDotWriter(w)
	if _, err := io.Copy(dw, src); err != nil {
		return reply{}, false, c.wrap(err)
	}
	if err := dw.Close(); err != nil {
		return reply{}, false, c.wrap(err)
	}
	c.deadline(c.timeouts.DataBlock)
	if err := c.bw.Flush(); err != nil {
		return reply{}, false, c.wrap(err)
	}
	c.deadline(c.timeouts.DataTerm)
	r, err = readReply(c.br)
	return r, true, c.wrap(err)
}

// next reads one more reply (LMTP's per-recipient replies after DATA).
func (c *client) next() (reply, error) {
	c.deadline(c.timeouts.DataTerm)
	r, err := readReply(c.br)
	return r, c.wrap(err)
}

// deadlineWriter writes to the client's buffer, extending the deadline
// before each write: the data-block timeout bounds each write, not the
// whole message.
type deadlineWriter struct {
	c *client
	d time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.c.deadline(w.d)
	return w.c.bw.Write(p)
}

// dotWriter writes a message as SMTP DATA content: every line ends in
// CRLF (a bare LF or bare CR becomes CRLF, so nothing that could be read as
// an end of data, or smuggle one, leaves us), a line starting with "." gets
// another, and Close ends the last line and writes ".".
type dotWriter struct {
	w         io.Writer
	buf       []byte
	lineStart bool
	cr        bool // the last byte was a CR not yet followed
}

func newDotWriter(w io.Writer) *dotWriter {
	return &dotWriter{w: w, lineStart: true, buf: make([]byte, 0, 32<<10)}
}

func (d *dotWriter) Write(p []byte) (int, error) {
	d.buf = d.buf[:0]
	for _, b := range p {
		if d.cr {
			d.cr = false
			d.buf = append(d.buf, '\r', '\n')
			d.lineStart = true
			if b == '\n' {
				continue
			}
		}
		switch b {
		case '\r':
			d.cr = true
			continue
		case '\n':
			d.buf = append(d.buf, '\r', '\n')
			d.lineStart = true
			continue
		case '.':
			if d.lineStart {
				d.buf = append(d.buf, '.')
			}
		}
		d.lineStart = false
		d.buf = append(d.buf, b)
	}
	if _, err := d.w.Write(d.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the data: a missing final line end is added, then ".".
func (d *dotWriter) Close() error {
	var tail []byte
	if d.cr || !d.lineStart {
		tail = append(tail, '\r', '\n')
	}
	d.cr, d.lineStart = false, true
	tail = append(tail, '.', '\r', '\n')
	_, err := d.w.Write(tail)
	return err
}
