package milter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	gomilter "github.com/d--j/go-milter"

	"github.com/mtakit/mtakit/internal/xtext"
	"github.com/mtakit/mtakit/policy"
)

// memBodyMax is the largest message with a replaced body kept in memory.
const memBodyMax = 1 << 20

// apply applies the modifications of the end of message to tx and m, in
// the order the milter sent them, and returns the quarantine queue when
// the milter quarantined the message. A modification that makes no sense
// (a malformed field name, an address that does not parse) is skipped
// with a warning; an error is ours (writing the new message).
//
// hidden is the number of fields at the top the milter was not shown (see
// ourTrace). As in Postfix, a change counts only the fields the milter saw,
// and an insert index counts those hidden ones as one field: 0 is the very
// top, 1 just below our Received field.
func (s *session) apply(ctx context.Context, tx *policy.Transaction, m *policy.Message, mods []gomilter.ModifyAction, hidden int) (quarantine string, err error) {
	if len(mods) == 0 {
		return "", nil
	}
	var (
		fields      [][]byte
		headerDirty bool
		body        [][]byte // the replacement body's chunks; nil: not replaced
		from        *policy.Address
		rcpts       = append([]policy.Recipient(nil), tx.Rcpts...)
		rcptsDirty  bool
	)
	for _, f := range m.Header.Fields() {
		fields = append(fields, f.Raw)
	}
	warn := func(ma gomilter.ModifyAction, why string) {
		s.log(ctx, slog.LevelWarn, "milter modification ignored: "+why, tx, slog.String("modification", ma.String()))
	}
	for _, ma := range mods {
		s.log(ctx, slog.LevelDebug, "milter modification", tx, slog.String("modification", ma.String()))
		switch ma.Type {
		case gomilter.ActionAddHeader, gomilter.ActionInsertHeader, gomilter.ActionChangeHeader:
			if !validName(ma.HeaderName) {
				warn(ma, "bad field name")
				continue
			}
			raw := s.fieldRaw(ma.HeaderName, ma.HeaderValue)
			switch ma.Type {
			case gomilter.ActionAddHeader:
				fields = append(fields, raw)
			case gomilter.ActionInsertHeader:
				i := 0
				if ma.HeaderIndex > 0 {
					i = min(hidden+int(ma.HeaderIndex)-1, len(fields))
				}
				if i < hidden {
					hidden++ // at the top, above our trace fields: not the milter's
				}
				fields = append(fields[:i], append([][]byte{raw}, fields[i:]...)...)
			default:
				fields = append(fields[:hidden:hidden], changeField(fields[hidden:], ma.HeaderName, int(ma.HeaderIndex), ma.HeaderValue == "", raw)...)
			}
			headerDirty = true
		case gomilter.ActionReplaceBody:
			if body == nil {
				body = [][]byte{}
			}
			body = append(body, ma.Body)
		case gomilter.ActionChangeFrom:
			a, err := parsePath(ma.From)
			if err != nil {
				warn(ma, err.Error())
				continue
			}
			from = &a
		case gomilter.ActionAddRcpt:
			a, err := parsePath(ma.Rcpt)
			if err != nil || a.IsNull() {
				warn(ma, "bad recipient address")
				continue
			}
			if !hasRcpt(rcpts, a) {
				rcpts = append(rcpts, recipient(a, ma.RcptArgs))
				rcptsDirty = true
			}
		case gomilter.ActionDelRcpt:
			a, err := parsePath(ma.Rcpt)
			if err != nil {
				warn(ma, "bad recipient address")
				continue
			}
			out := rcpts[:0]
			for _, r := range rcpts {
				if !r.Addr.Equal(a) {
					out = append(out, r)
				}
			}
			rcptsDirty = rcptsDirty || len(out) != len(rcpts)
			rcpts = out
		case gomilter.ActionQuarantine:
			quarantine = s.m.opts.Quarantine
			s.log(ctx, slog.LevelInfo, "milter quarantines the message", tx, slog.String("reason", ma.Reason), slog.String("queue", quarantine))
		}
	}

	// The message first: it can fail, and then nothing is changed.
	if headerDirty || body != nil {
		var hb bytes.Buffer
		for _, f := range fields {
			hb.Write(f)
		}
		if body == nil {
			h, err := parseHeader(hb.Bytes())
			if err != nil {
				return "", err
			}
			m.Header = h
		} else if err := s.replaceMessage(m, hb.Bytes(), body); err != nil {
			return "", err
		}
	}
	if from != nil {
		tx.From = *from
	}
	if rcptsDirty {
		tx.Rcpts = rcpts
	}
	return quarantine, nil
}

// parseHeader parses fields (CRLF-terminated) as a header block, which
// must take all of them.
func parseHeader(fields []byte) (*policy.Header, error) {
	buf := make([]byte, 0, len(fields)+2)
	buf = append(append(buf, fields...), '\r', '\n')
	h, n, sep, err := policy.ReadHeader(bufio.NewReaderSize(bytes.NewReader(buf), max(len(buf), 4096)), policy.MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("modified header: %w", err)
	}
	if !sep || n != int64(len(buf)) {
		return nil, errors.New("modified header does not parse as one")
	}
	return h, nil
}

// replaceMessage makes m the message of header and the body whose chunks
// are given, its line ends made CRLF: in memory when small, else in an
// unlinked temporary file, written as the chunks are read.
func (s *session) replaceMessage(m *policy.Message, header []byte, body [][]byte) error {
	if _, err := parseHeader(header); err != nil {
		return err
	}
	n := len(header) + 2
	for _, c := range body {
		n += len(c)
	}
	if n <= memBodyMax {
		var b bytes.Buffer
		b.Grow(n + n/16)
		if err := writeMessage(&b, header, body); err != nil {
			return err
		}
		return m.Replace(bytes.NewReader(b.Bytes()), int64(b.Len()), nil)
	}
	f, err := os.CreateTemp(s.m.opts.TempDir, "mtakit-milter-*")
	if err != nil {
		return err
	}
	os.Remove(f.Name())
	cw := &countWriter{w: bufio.NewWriterSize(f, 64<<10)}
	err = writeMessage(cw, header, body)
	if err == nil {
		err = cw.w.(*bufio.Writer).Flush()
	}
	if err == nil {
		err = m.Replace(f, cw.n, f)
	}
	if err != nil {
		f.Close()
	}
	return err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeMessage writes header, the empty line and the body chunks with
// every line end made CRLF (a milter may send LF, or a bare CR).
func writeMessage(w io.Writer, header []byte, body [][]byte) error {
	if _, err := w.Write(header); err != nil {
		return err
	}
	if _, err := io.WriteString(w, "\r\n"); err != nil {
		return err
	}
	cr := false // the previous chunk ended in CR
	for _, b := range body {
		start := 0
		for i := 0; i < len(b); i++ {
			switch b[i] {
			case '\r':
				if _, err := w.Write(b[start:i]); err != nil {
					return err
				}
				if _, err := io.WriteString(w, "\r\n"); err != nil {
					return err
				}
				start, cr = i+1, true
				continue
			case '\n':
				if _, err := w.Write(b[start:i]); err != nil {
					return err
				}
				if !cr {
					if _, err := io.WriteString(w, "\r\n"); err != nil {
						return err
					}
				}
				start = i + 1
			}
			cr = false
		}
		if _, err := w.Write(b[start:]); err != nil {
			return err
		}
	}
	return nil
}

// fieldRaw formats a field the milter gave: line ends made CRLF, empty
// continuation lines dropped (they would end the header) and the others
// indented, and the space after the colon added unless the milter sends
// it itself (SMFIP_HDR_LEADSPC).
func (s *session) fieldRaw(name, value string) []byte {
	value = strings.ReplaceAll(value, "\r\n", "\n")
	value = strings.ReplaceAll(value, "\r", "\n")
	var b bytes.Buffer
	b.WriteString(name)
	b.WriteByte(':')
	if !s.leadSpace && value != "" {
		b.WriteByte(' ')
	}
	for i, line := range strings.Split(value, "\n") {
		if i > 0 {
			if strings.TrimSpace(line) == "" {
				continue
			}
			b.WriteString("\r\n")
			if line[0] != ' ' && line[0] != '\t' {
				b.WriteByte('\t')
			}
		}
		b.WriteString(line)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// changeField changes (or deletes) the index-th field named name (1-based,
// counting only those); when there is none it appends raw, as Sendmail and
// Postfix do (a deletion of a missing field does nothing).
func changeField(fields [][]byte, name string, index int, del bool, raw []byte) [][]byte {
	if index < 1 {
		index = 1
	}
	n := 0
	for i, f := range fields {
		if !strings.EqualFold(fieldName(f), name) {
			continue
		}
		if n++; n == index {
			if del {
				return append(fields[:i], fields[i+1:]...)
			}
			fields[i] = raw
			return fields
		}
	}
	if !del {
		fields = append(fields, raw)
	}
	return fields
}

func fieldName(raw []byte) string {
	i := bytes.IndexByte(raw, ':')
	if i < 0 {
		return ""
	}
	return string(bytes.TrimRight(raw[:i], " \t"))
}

// validName reports whether name is a field name: printable ASCII, no
// colon (RFC 5322 section 2.2).
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// parsePath reads "<addr>" (or a bare address) as a milter sends it;
// "<>" is the null sender.
func parsePath(s string) (policy.Address, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
	if s == "" {
		return policy.Address{}, nil
	}
	return policy.ParseAddress(s)
}

func hasRcpt(rs []policy.Recipient, a policy.Address) bool {
	for _, r := range rs {
		if r.Addr.Equal(a) {
			return true
		}
	}
	return false
}

// recipient makes a recipient of an address a milter added, with the
// NOTIFY and ORCPT of its ESMTP arguments.
func recipient(a policy.Address, args string) policy.Recipient {
	r := policy.Recipient{Addr: a}
	for _, arg := range strings.Fields(args) {
		k, v, _ := strings.Cut(arg, "=")
		switch strings.ToUpper(k) {
		case "NOTIFY":
			for _, n := range strings.Split(v, ",") {
				if n = strings.ToUpper(n); n == "NEVER" || n == "SUCCESS" || n == "FAILURE" || n == "DELAY" {
					r.Notify = append(r.Notify, n)
				}
			}
		case "ORCPT":
			if d, err := xtext.Decode(v); err == nil {
				r.ORCPT = d
			}
		}
	}
	return r
}
