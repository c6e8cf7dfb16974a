package smtp

import (
	"bytes"
	"io"

	gosmtp "github.com/emersion/go-smtp"
)

// bodyReader hands the session the body of a DATA command straight from
// the filter, in bulk: dot-stuffing removed (RFC 5321 section 4.5.2) and
// the end-of-data line left out, at the speed of bytes.IndexByte and copy.
//
// go-smtp's own data reader takes the body a byte at a time through its
// bufio.Reader (ReadByte, a state machine step and a line-length count
// per byte): the largest share of the server's CPU for a 100 KiB message
// (37 % in a profile of doe-family), more than the no-op server spends on
// everything else. go-smtp's buffer holds nothing when it calls Data: the
// filter hands it one command line per read, and "DATA" was the last. So
// the body is read here, from the socket (through the filter's read-ahead,
// which holds what followed the command), with the same state machine as
// bodyEnd, whose end is where go-smtp finds it, and the same limits:
// MaxMessageBytes (ErrDataTooLarge) and MaxLineLength counted on the
// bytes as sent, as go-smtp's line reader counts (ErrTooLongLine).
//
// After Data, go-smtp drains its data reader: finish leaves it an
// end-of-data line (".\r\n") to read, so that it ends at once, after
// reading the rest of a body the session left unread; the bytes after
// the end of data (the next commands, pipelined) stay in the filter for
// go-smtp to read in their turn.
type bodyReader struct {
	c *conn
	// max is MaxMessageBytes (0: none); n counts the body bytes handed
	// over.
	max, n int64
	// lineMax is MaxLineLength (0: none); line counts as go-smtp's
	// lineLimitReader does: the bytes since the last LF, that LF included.
	lineMax, line int
	done          bool  // the end-of-data line was read
	err           error // the error that ended the reading, returned again
}

// endOfData is what go-smtp's data reader reads after the session's
// reader finished: the end-of-data line alone, an empty rest of body.
var endOfData = []byte(".\r\n")

func newBodyReader(c *conn) *bodyReader {
	r := &bodyReader{c: c, line: 1} // go-smtp counted the LF of "DATA"
	if c.srv != nil {
		r.max = c.srv.limits.MaxMessageBytes
		r.lineMax = c.srv.limits.MaxLineLength
	}
	c.bodyState = bodyBeginLine
	return r
}

// Read reads body bytes into p, which must hold at least two: a CR held
// back after a line's leading dot (the end of data, or not) may have to be
// given back with the byte after it.
func (r *bodyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.done {
		return 0, io.EOF
	}
	if len(p) < 2 {
		return 0, io.ErrShortBuffer
	}
	off := 0
	if r.c.bodyState == bodyDotCR {
		off = 1 // room for the held CR
	}
	n, err := r.c.readRaw(p[off:])
	raw := p[off : off+n]
	at := r.overLong(raw) // before scan writes over raw
	w, end := r.scan(p, raw)
	long := at >= 0 && (end < 0 || at < end)
	r.n += int64(w)
	if end >= 0 {
		r.done = true
		r.c.body = false
		if end < n {
			// The commands after the end of data (and err after them).
			r.c.unread(raw[end:], err)
		} else if err != nil {
			// For go-smtp's next read, after the end-of-data line.
			r.c.rerr = err
		}
		err = io.EOF
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	switch {
	case long:
		r.err = gosmtp.ErrTooLongLine
		return 0, r.err
	case r.max > 0 && r.n > r.max:
		r.err = gosmtp.ErrDataTooLarge
		return 0, r.err
	case err != nil && err != io.EOF:
		r.err = err
	}
	return w, err
}

// scan runs the body's state machine (the states of go-smtp's data
// reader, see bodyEnd) over raw, the bytes just read, which lie in p at
// p[0:] or p[1:], and writes the body bytes they carry to p from its
// start: a line's leading dot dropped, the end-of-data line left out. It
// returns how many bytes it wrote, and the index in raw just past the
// end-of-data line (-1 if raw does not hold it).
//
// Writing over p as it reads is safe: every byte read gives at most one
// byte written, but for a CR held back after a leading dot, given back
// with the byte after it; that CR was read without a byte written (or, at
// the start, the room for it is p[0], left free by Read).
func (r *bodyReader) scan(p, raw []byte) (w, end int) {
	st := r.c.bodyState
	for i := 0; i < len(raw); {
		if st == bodyData {
			// Within a line only a CR matters: copy up to it.
			j := bytes.IndexByte(raw[i:], '\r')
			if j < 0 {
				j = len(raw) - i
			}
			w += copy(p[w:], raw[i:i+j])
			if i += j; i == len(raw) {
				break
			}
		}
		ch := raw[i]
		i++
		switch st {
		case bodyBeginLine:
			switch ch {
			case '.':
				st = bodyDot
				continue // the stuffed dot
			case '\r':
				st = bodyCR
			default:
				st = bodyData
			}
		case bodyDot:
			if ch == '\r' {
				st = bodyDotCR
				continue // held: the end of data if an LF follows
			}
			st = bodyData
		case bodyDotCR:
			if ch == '\n' {
				r.c.bodyState = bodyBeginLine
				return w, i
			}
			// A bare CR after a leading dot: given back, for the
			// body checker to refuse (go-smtp would drop it).
			p[w] = '\r'
			w++
			st = bodyData
		case bodyCR:
			if ch == '\n' {
				st = bodyBeginLine
			} else {
				st = bodyData
			}
		case bodyData:
			st = bodyCR // ch is the CR found above
		}
		p[w] = ch
		w++
	}
	r.c.bodyState = st
	return w, -1
}

// overLong counts the line lengths of b as go-smtp's lineLimitReader
// does (each byte counts, and an LF starts a new count at 1) and returns
// the index of the first byte that makes a line longer than lineMax (-1:
// none). Bytes after the end of data are counted too (but a long line
// there is not the body's: see Read).
func (r *bodyReader) overLong(b []byte) int {
	if r.lineMax <= 0 {
		return -1
	}
	for pos := 0; ; {
		i := bytes.IndexByte(b[pos:], '\n')
		seg := i
		if i < 0 {
			seg = len(b) - pos
		}
		if r.line+seg > r.lineMax {
			return pos + r.lineMax - r.line
		}
		if i < 0 {
			r.line += seg
			return -1
		}
		r.line = 1
		pos += i + 1
	}
}

// finish reads and drops what is left of a body the session did not read
// to its end (a message too big, or refused for our own failure), and
// then leaves go-smtp's data reader an end-of-data line to read. When the
// body cannot be read to its end (a line too long, a timeout, the client
// gone), go-smtp's reader gets the error instead and the connection closes
// after the reply.
func (r *bodyReader) finish() {
	if r.err == gosmtp.ErrDataTooLarge || r.err == nil && !r.done {
		r.max, r.err = 0, nil
		bp := readAheadBufs.Get().(*[]byte)
		for !r.done && r.err == nil {
			r.Read(*bp)
		}
		readAheadBufs.Put(bp)
	}
	c := r.c
	if r.done {
		c.pending = endOfData
	} else {
		c.rerr = r.err
	}
	if r.err == nil {
		return
	}
	c.mu.Lock()
	c.closeAfter = true
	c.mu.Unlock()
}
