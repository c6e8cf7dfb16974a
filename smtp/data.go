package smtp

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

var (
	errBareLF       = &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 6, 11}, Message: "Bare LF/CR not allowed"}
	errNUL          = &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 6, 0}, Message: "NUL characters not allowed"}
	errTooBig       = &gosmtp.SMTPError{Code: 552, EnhancedCode: gosmtp.EnhancedCode{5, 3, 4}, Message: "Message too big"}
	errHeaderTooBig = &gosmtp.SMTPError{Code: 552, EnhancedCode: gosmtp.EnhancedCode{5, 3, 4}, Message: "Message header too large"}
	errLongLine     = &gosmtp.SMTPError{Code: 500, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	errDataTime     = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 4, 2}, Message: "Timeout receiving data, closing connection"}
)

// bodyError is the violation found by bodyChecker.
type bodyError int

const (
	bodyOK     bodyError = iota
	bodyBareLF           // LF not preceded by CR
	bodyBareCR           // CR not followed by LF
	bodyNUL              // a NUL byte
)

func (e bodyError) String() string {
	return [...]string{"ok", "bare LF", "bare CR", "NUL"}[e]
}

// bodyChecker checks a message body as it streams past: every line must end
// in CRLF (a bare LF or CR is how SMTP smuggling hides a second message
// behind a non-standard end-of-data), no NUL, and it notes 8-bit bytes.
// The zero value is ready; feed it with Write and finish with Close.
type bodyChecker struct {
	prevCR bool
	err    bodyError
	eight  bool
	n      int64
}

// errBody is returned by bodyChecker.Write once a violation is found.
var errBody = errors.New("smtp: malformed message body")

// Write checks p. Once a violation is found (see Err) it returns errBody,
// so that a copy stops there.
func (b *bodyChecker) Write(p []byte) (int, error) {
	if b.err != bodyOK {
		return 0, errBody
	}
	if b.clean(p) {
		return len(p), nil
	}
	// A violation somewhere in p: find the first, byte by byte.
	prevCR := b.prevCR
	for i, c := range p {
		if c > '\r' && c < 0x80 {
			if prevCR {
				return b.fail(bodyBareCR, i)
			}
			continue
		}
		switch {
		case c == '\n':
			if !prevCR {
				return b.fail(bodyBareLF, i)
			}
			prevCR = false
		case prevCR:
			return b.fail(bodyBareCR, i)
		case c == '\r':
			prevCR = true
		case c == 0:
			return b.fail(bodyNUL, i)
		case c >= 0x80:
			b.eight = true
		}
	}
	b.prevCR = prevCR
	b.n += int64(len(p))
	return len(p), nil
}

var cr = []byte("\r")

// clean is Write's fast path: with the library's vectorised searches
// instead of a branch per byte, it checks that p holds no violation and,
// if so, records it (state, size, 8-bit) and reports true. When it
// reports false it has changed nothing, and the byte loop finds the first
// violation.
//
// p is clean when it has no NUL, every LF is preceded by a CR (in p, or
// the CR that ended the previous write) and every CR is followed by an LF
// (in p, or it is p's last byte, decided by the next write or Close). The
// LFs are found one by one (IndexByte, a call per line) and their CRs
// checked; the CRs are then only counted: there must be one per CRLF
// found, plus at most the last byte.
func (b *bodyChecker) clean(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	lead := 0 // an LF at p[0] completing the previous write's CR
	if b.prevCR {
		if p[0] != '\n' {
			return false
		}
		lead = 1
	}
	trail := 0 // a CR at the end of p, waiting for the next write
	if p[len(p)-1] == '\r' {
		trail = 1
	}
	pairs := 0 // LFs after a CR in p
	for i := lead; ; i++ {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		i += j
		if i == 0 || p[i-1] != '\r' {
			return false
		}
		pairs++
	}
	if bytes.Count(p, cr) != pairs+trail || bytes.IndexByte(p, 0) >= 0 {
		return false
	}
	if !b.eight {
		b.eight = hasHigh(p)
	}
	b.prevCR = trail == 1
	b.n += int64(len(p))
	return true
}

// hasHigh reports whether p has a byte above 127, eight bytes at a time.
func hasHigh(p []byte) bool {
	const high = 0x8080808080808080
	var acc uint64
	for len(p) >= 64 {
		acc |= binary.LittleEndian.Uint64(p) | binary.LittleEndian.Uint64(p[8:]) |
			binary.LittleEndian.Uint64(p[16:]) | binary.LittleEndian.Uint64(p[24:]) |
			binary.LittleEndian.Uint64(p[32:]) | binary.LittleEndian.Uint64(p[40:]) |
			binary.LittleEndian.Uint64(p[48:]) | binary.LittleEndian.Uint64(p[56:])
		if acc&high != 0 {
			return true
		}
		p = p[64:]
	}
	for len(p) >= 8 {
		acc |= binary.LittleEndian.Uint64(p)
		p = p[8:]
	}
	for _, c := range p {
		acc |= uint64(c)
	}
	return acc&high != 0
}

func (b *bodyChecker) fail(e bodyError, i int) (int, error) {
	b.err = e
	b.n += int64(i)
	return i, errBody
}

// Close ends the body; a CR at its very end is a bare CR.
func (b *bodyChecker) Close() error {
	if b.err == bodyOK && b.prevCR {
		b.err = bodyBareCR
	}
	return nil
}

// Err returns the first violation found.
func (b *bodyChecker) Err() bodyError { return b.err }

// EightBit reports whether a byte above 127 was seen.
func (b *bodyChecker) EightBit() bool { return b.eight }

// Size returns the number of bytes checked and found good.
func (b *bodyChecker) Size() int64 { return b.n }

// SanitizeHelo makes a HELO argument (or any client-given host name) safe
// for a Received header: letters, digits and "-._:[]" are kept, any other
// byte becomes "?", and it is cut to 255 bytes. An empty name gives
// "unknown".
func SanitizeHelo(s string) string { return string(appendHelo(nil, s)) }

// appendHelo appends SanitizeHelo(s) to b.
func appendHelo(b []byte, s string) []byte {
	if len(s) > 255 {
		s = s[:255]
	}
	if s == "" {
		return append(b, "unknown"...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			b = append(b, c)
		case c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']':
			b = append(b, c)
		default:
			b = append(b, '?')
		}
	}
	return b
}

// protocol is the WITH keyword of RFC 3848.
func protocol(pc *policy.Conn) string {
	p := "SMTP"
	if pc.ESMTP {
		p = "ESMTP"
		if pc.TLS != nil {
			p += "S"
		}
		if pc.Authenticated() {
			p += "A"
		}
	}
	return p
}

// receivedValue formats the value of our Received field. It appends to one
// buffer: it runs for every message.
func receivedValue(hostname string, tx *policy.Transaction, now time.Time) string {
	pc := tx.Conn
	b := make([]byte, 0, 256)
	b = append(b, "from "...)
	b = appendHelo(b, pc.Helo)
	b = append(b, " ("...)
	if pc.ReverseName != "" {
		b = appendHelo(b, pc.ReverseName)
	} else {
		b = append(b, "unknown"...)
	}
	ip := pc.Remote.Addr()
	if ip.Is6() {
		b = append(b, " [IPv6:"...)
	} else {
		b = append(b, " ["...)
	}
	b = append(b, ip.String()...) // not AppendTo: "invalid IP" for none
	b = append(b, "])"...)
	b = append(b, " by "...)
	b = appendHelo(b, hostname)
	b = append(b, " with "...)
	b = append(b, protocol(pc)...)
	if pc.TLS != nil {
		b = append(b, " (version="...)
		b = append(b, strings.ReplaceAll(tls.VersionName(pc.TLS.Version), " ", "")...)
		b = append(b, " cipher="...)
		b = append(b, tls.CipherSuiteName(pc.TLS.CipherSuite)...)
		b = append(b, ')')
	}
	b = append(b, " id "...)
	b = append(b, tx.ID...)
	if len(tx.Rcpts) == 1 {
		b = append(b, " for "...)
		b = append(b, tx.Rcpts[0].Addr.Path()...)
	}
	b = append(b, "; "...)
	b = now.AppendFormat(b, time.RFC1123Z)
	return string(b)
}

// spoolWriteError tags the errors of writing the spool file, so they are
// told from errors reading the client.
type spoolWriteError struct{ err error }

func (e spoolWriteError) Error() string { return "spool write: " + e.err.Error() }
func (e spoolWriteError) Unwrap() error { return e.err }

// spoolBufferSize is how much of a message is held in memory before it
// goes to the connection's spool file.
const spoolBufferSize = 64 << 10

// spooler is where a message goes while it is received: the smuggling
// check, then a 64 KiB buffer, then the connection's spool file. A
// message that fits in the buffer (most mail) is never written to the
// file: rules and the queue read it from memory, which saves a write and
// the reads back per message. Nothing is lost: the spool file was never
// durable (it is unlinked at once and not synced); the queue's fsync is
// what makes a 250. The file is had only when the buffer first fills
// (a connection of small messages creates none); NewServer checks that
// SpoolDir is usable, so a misconfigured one shows at start, not at the
// first large message.
//
// Write is io.MultiWriter(&chk, spool) (a write the check refuses goes no
// further) without that one's allocations, and spooler carries the copy
// buffer too (io.Copy would make a new 32 KiB one per message: neither
// side has ReadFrom or WriteTo). Recycled through a pool.
type spooler struct {
	chk     bodyChecker
	conn    *conn    // whose spool file the message goes to
	file    *os.File // conn's spool file, once the buffer filled
	written bool     // file holds the start of this message
	off     int64    // bytes written to file
	buf     []byte   // what is not in file yet; cap spoolBufferSize
	mem     bytes.Reader
	copyBuf []byte
}

var spoolers = sync.Pool{New: func() any {
	return &spooler{buf: make([]byte, 0, spoolBufferSize), copyBuf: make([]byte, 32<<10)}
}}

func (s *spooler) Write(p []byte) (int, error) {
	if n, err := s.chk.Write(p); err != nil {
		return n, err
	}
	n, err := s.write(p)
	if err != nil {
		err = spoolWriteError{err}
	}
	return n, err
}

// spoolRaw writes to a spooler without the check (our header fields).
type spoolRaw struct{ *spooler }

func (s spoolRaw) Write(p []byte) (int, error) { return s.write(p) }

func (s *spooler) write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if len(s.buf) == cap(s.buf) {
			if err := s.flush(); err != nil {
				return n, err
			}
		}
		k := copy(s.buf[len(s.buf):cap(s.buf)], p)
		s.buf = s.buf[:len(s.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

// flush writes the buffer to the spool file, from offset 0 on with
// WriteAt: no seek per message.
func (s *spooler) flush() error {
	if s.file == nil {
		f, err := s.conn.spoolFile()
		if err != nil {
			return err
		}
		s.file = f
	}
	s.written = true
	n, err := s.file.WriteAt(s.buf, s.off)
	s.off += int64(n)
	s.buf = s.buf[:copy(s.buf, s.buf[n:])]
	return err
}

// source returns what the message can be read back from: the buffer
// when it held the whole message, else the spool file, once the rest of
// the buffer is written to it.
func (s *spooler) source() (io.ReaderAt, error) {
	if !s.written {
		s.mem.Reset(s.buf)
		return &s.mem, nil
	}
	if len(s.buf) > 0 {
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
	return s.file, nil
}

// receive streams a message into a spooler, with the fields rules added
// before DATA and our Received field on top, runs the preq rules and hands
// the message to the queue. It returns the reply: 250 only once Enqueue
// returned nil.
func (s *Server) receive(c *conn, nc net.Conn, tx *policy.Transaction, r io.Reader) (*gosmtp.SMTPError, bool) {
	nc.SetReadDeadline(time.Now().Add(s.limits.DataTimeout))
	// Each line names the transaction itself: a logger.With per message
	// would cost allocations (and, with a text or JSON handler, formatting)
	// whether anything is logged or not; the output is the same.
	log := c.log

	// Our Received field, with the fields rules added before DATA above
	// it, as RFC 7208 section 9.1 wants of Received-SPF: they are trace
	// fields of this hop, and rules tell our own fields from a sender's
	// forgeries by their place above our Received.
	var hdr policy.Header
	hdr.Add("Received", receivedValue(s.cfg.Hostname, tx, time.Now()))
	fields := tx.Header.Fields()
	for i := len(fields) - 1; i >= 0; i-- {
		hdr.AddRaw(fields[i].Raw)
	}
	sp := spoolers.Get().(*spooler) // reset when put back
	sp.conn = c
	defer func() {
		// m, which may read sp.mem, is closed by now (deferred later).
		*sp = spooler{buf: sp.buf[:0], copyBuf: sp.copyBuf}
		spoolers.Put(sp)
	}()
	if _, err := hdr.WriteTo(spoolRaw{sp}); err != nil {
		log.Error("spool write", "id", tx.ID, "error", err)
		return errInternal, false
	}
	chk := &sp.chk
	_, err := io.CopyBuffer(sp, r, sp.copyBuf)
	chk.Close()
	size := hdr.Size() + chk.Size()
	if sp.written {
		c.noteSpooled(size) // written, even if refused
	}
	if err != nil {
		// Declared here, not above: errors.As makes them escape, which
		// would cost an allocation for every message.
		var we spoolWriteError
		if errors.As(err, &we) {
			// Our disk, not the client: full, read-only, failing.
			log.Error("spool write", "id", tx.ID, "error", we.err)
			return errInternal, false
		}
	}
	if err != nil && !errors.Is(err, errBody) {
		switch {
		case errors.Is(err, gosmtp.ErrDataTooLarge):
			log.Info("message too big", "id", tx.ID, "limit", s.limits.MaxMessageBytes)
			return errTooBig, false
		case errors.Is(err, gosmtp.ErrTooLongLine):
			log.Info("line too long in data", "id", tx.ID, "limit", s.limits.MaxLineLength)
			return errLongLine, false
		case isTimeout(err):
			log.Info("data timeout", "id", tx.ID)
			c.mu.Lock()
			c.closeAfter = true
			c.mu.Unlock()
			return errDataTime, false
		case errors.Is(err, gosmtp.ErrDataReset):
			return errNoTx, false
		}
		var se *gosmtp.SMTPError
		if errors.As(err, &se) {
			return se, false
		}
		log.Info("data read failed", "id", tx.ID, "error", err)
		return errInternal, false
	}
	switch chk.Err() {
	case bodyBareLF, bodyBareCR:
		log.Warn("message refused: "+chk.Err().String()+" (possible SMTP smuggling)", "id", tx.ID, "size", chk.Size())
		return errBareLF, false
	case bodyNUL:
		log.Info("message refused: NUL byte", "id", tx.ID, "size", chk.Size())
		return errNUL, false
	}
	if chk.EightBit() && tx.Params.Body != "8BITMIME" && tx.Params.Body != "BINARYMIME" {
		// Accepted as Postfix does; recorded for the log.
		log.Info("8-bit data without BODY=8BITMIME", "id", tx.ID)
	}
	src, err := sp.source()
	if err != nil {
		log.Error("spool write", "id", tx.ID, "error", err)
		return errInternal, false
	}

	m, err := policy.NewMessage(src, size, nil)
	if err != nil {
		// The only fault of the client's here is a header block over
		// policy.MaxHeaderBytes; anything else is reading our own spool
		// file back, which must not bounce the message with a 5xx.
		if errors.Is(err, policy.ErrHeaderTooLarge) {
			log.Info("header too large", "id", tx.ID, "limit", policy.MaxHeaderBytes)
			return errHeaderTooBig, false
		}
		log.Error("spool read", "id", tx.ID, "error", err)
		return errInternal, false
	}
	defer m.Close()

	ctx, cancel := lazyctx.WithTimeout(c.ctx, s.limits.DataTimeout)
	defer cancel()
	res := s.cfg.Chain.EvalPreQ(ctx, tx, m)
	if logging(log) {
		log.LogAttrs(logCtx, slog.LevelInfo, "preq", slog.String("id", tx.ID), slog.String("verdict", res.Verdict.String()), ruleAttr(res), slog.Int64("size", chk.Size()))
	}
	if !res.Accepted() {
		return replyError(res.Reply), false
	}
	qctx, qcancel := lazyctx.WithTimeout(c.keepCtx, s.limits.DataTimeout)
	defer qcancel()
	if err := s.cfg.Queue.Enqueue(qctx, tx, m); err != nil {
		log.Error("enqueue failed", "id", tx.ID, "error", err)
		return errInternal, false
	}
	if logging(log) {
		log.LogAttrs(logCtx, slog.LevelInfo, "queued", slog.String("id", tx.ID), slog.String("from", tx.From.Path()), slog.Int("rcpts", len(tx.Rcpts)), slog.Int64("size", chk.Size()), slog.String("quarantine", tx.Quarantine()))
	}

	ok := policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK: queued as " + tx.ID}
	if res.Reply.Code == 250 && res.Reply != policy.DefaultReply(policy.StagePreQ) {
		// A rule's reply (see Replies in doc.go); a malformed enhanced
		// code gives 2.0.0.
		ok.Enhanced = res.Reply.Enhanced
		if t := sanitizeText(res.Reply.Text); t != "" {
			ok.Text = t + " (queued as " + tx.ID + ")"
		}
	}
	return positiveReply(ok), true
}
