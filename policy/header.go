package policy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// Field is one header field. Raw holds the field exactly as it will be
// written, name, colon, value, folding and the final CRLF, so fields that no
// rule touched keep the bytes a DKIM signature covers.
type Field struct {
	Raw []byte
}

// Name returns the field name as written ("Subject").
func (f Field) Name() string {
	i := bytes.IndexByte(f.Raw, ':')
	if i < 0 {
		return ""
	}
	return string(bytes.TrimRight(f.Raw[:i], " \t"))
}

// Value returns the unfolded value with surrounding white space trimmed.
func (f Field) Value() string {
	i := bytes.IndexByte(f.Raw, ':')
	if i < 0 {
		return ""
	}
	v := string(f.Raw[i+1:])
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// Header is the editable header block of a message, in order. The zero value
// is an empty header. Its methods take canonical or any-case names.
type Header struct {
	fields []Field
}

// ErrHeaderTooLarge is returned when the header block exceeds the limit of
// ReadHeader.
var ErrHeaderTooLarge = errors.New("policy: header block too large")

// ReadHeader reads a header block from r, up to and including the empty line
// that ends it, and returns it with the number of bytes consumed. A line that
// is neither a field nor a continuation ends the header without being
// consumed (hasSep is then false and the line belongs to the body), as
// Postfix does; so does the end of input. max bounds the bytes read (0: 1 MiB);
// a single line longer than r's buffer also gives ErrHeaderTooLarge.
func ReadHeader(r *bufio.Reader, max int) (h *Header, n int64, hasSep bool, err error) {
	if max <= 0 {
		max = 1 << 20
	}
	h = &Header{fields: make([]Field, 0, 16)}
	// The fields' bytes are carved in order from one slab (a few
	// allocations a header, not one a field). Each Raw's capacity ends
	// with it, so that an append to one copies it instead of writing over
	// the next; a slab that grows leaves the fields before in the old one.
	var slab []byte
	last := 0 // where the last field starts in slab
	for {
		line, perr := peekLine(r, max-int(n))
		if perr == errLineTooLong {
			return nil, n, false, ErrHeaderTooLarge
		}
		if perr != nil && perr != io.EOF {
			return nil, n, false, perr // a read error is not the end of the header
		}
		if len(line) == 0 {
			return h, n, false, nil // end of input
		}
		if isBlankLine(line) {
			r.Discard(len(line))
			return h, n + int64(len(line)), true, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(h.fields) == 0 {
				return h, n, false, nil
			}
			slab = append(slab, line...)
			h.fields[len(h.fields)-1].Raw = slab[last:len(slab):len(slab)]
		} else if validFieldLine(line) {
			if slab == nil {
				slab = make([]byte, 0, headerSizeHint(r, max))
			}
			last = len(slab)
			slab = append(slab, line...)
			h.fields = append(h.fields, Field{Raw: slab[last:len(slab):len(slab)]})
		} else {
			return h, n, false, nil
		}
		r.Discard(len(line))
		n += int64(len(line))
		if perr != nil {
			return h, n, false, nil
		}
	}
}

// headerSizeHint returns the size of the header block r starts with as
// far as r has it buffered already (up to its blank line, within max), or
// 4 KiB when the blank line is not there yet.
func headerSizeHint(r *bufio.Reader, max int) int {
	b, _ := r.Peek(min(r.Buffered(), max))
	n := len(b) + 1
	if i := bytes.Index(b, []byte("\n\r\n")); i >= 0 {
		n = i + 3
	}
	if i := bytes.Index(b[:min(n, len(b))], []byte("\n\n")); i >= 0 {
		n = i + 2
	}
	if n > len(b) {
		return min(max, 4096)
	}
	return n
}

var errLineTooLong = errors.New("line too long")

// peekLine returns the next line including its LF without consuming it.
func peekLine(r *bufio.Reader, max int) ([]byte, error) {
	for size := 512; ; size *= 2 {
		if size > r.Size() {
			size = r.Size()
		}
		b, err := r.Peek(size)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i+1 > max {
				return nil, errLineTooLong
			}
			return b[:i+1], nil
		}
		// A full buffer without a LF is a line longer than r can hold:
		// Peek(r.Size()) then returns a nil error, and asking again would
		// loop forever.
		if len(b) > max || len(b) == r.Size() {
			return nil, errLineTooLong
		}
		if err != nil && err != bufio.ErrBufferFull {
			return b, err
		}
	}
}

func isBlankLine(l []byte) bool {
	return string(l) == "\r\n" || string(l) == "\n"
}

func validFieldLine(l []byte) bool {
	i := bytes.IndexByte(l, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(l[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c <= 32 || c >= 127 {
			return false
		}
	}
	return true
}

// Len returns the number of fields.
func (h *Header) Len() int { return len(h.fields) }

// Fields returns the fields in order. The slice is a copy; the Raw bytes are
// shared and must not be modified.
func (h *Header) Fields() []Field { return append([]Field(nil), h.fields...) }

// Get returns the value of the first field named key, or "".
func (h *Header) Get(key string) string {
	for _, f := range h.fields {
		if strings.EqualFold(f.Name(), key) {
			return f.Value()
		}
	}
	return ""
}

// Values returns the values of every field named key, in order.
func (h *Header) Values(key string) []string {
	var vs []string
	for _, f := range h.fields {
		if strings.EqualFold(f.Name(), key) {
			vs = append(vs, f.Value())
		}
	}
	return vs
}

// Has reports whether a field named key exists.
func (h *Header) Has(key string) bool {
	for _, f := range h.fields {
		if strings.EqualFold(f.Name(), key) {
			return true
		}
	}
	return false
}

// Add inserts a field at the top of the header, where trace fields
// (Received, Authentication-Results, Received-SPF) belong. Long values are
// folded; CR and LF in value are replaced by spaces so a rule cannot inject
// fields. Bytes not allowed in a field name (controls, space, colon,
// non-ASCII) are dropped from key; a key left empty panics.
func (h *Header) Add(key, value string) {
	h.fields = append([]Field{newField(key, value)}, h.fields...)
}

// Append adds a field at the end of the header.
func (h *Header) Append(key, value string) {
	if n := len(h.fields); n > 0 && !bytes.HasSuffix(h.fields[n-1].Raw, []byte("\n")) {
		// The last field read had no line end (end of input): end it,
		// or the new field would be glued to its value.
		last := &h.fields[n-1]
		last.Raw = append(last.Raw[:len(last.Raw):len(last.Raw)], '\r', '\n')
	}
	h.fields = append(h.fields, newField(key, value))
}

// AddRaw inserts a pre-formatted field (as produced by a DKIM signer, ending
// in CRLF) at the top.
func (h *Header) AddRaw(raw []byte) {
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		// The full slice expression makes append copy: the caller's
		// array is not written to.
		raw = bytes.TrimRight(raw, "\r\n")
		raw = append(raw[:len(raw):len(raw)], '\r', '\n')
	}
	h.fields = append([]Field{{Raw: raw}}, h.fields...)
}

// Set replaces every field named key by one field with value, at the place
// of the first, or adds it at the top when there was none.
func (h *Header) Set(key, value string) {
	idx := -1
	out := h.fields[:0]
	for _, f := range h.fields {
		if strings.EqualFold(f.Name(), key) {
			if idx >= 0 {
				continue
			}
			idx = len(out)
			f = newField(key, value)
		}
		out = append(out, f)
	}
	h.fields = out
	if idx < 0 {
		h.Add(key, value)
	}
}

// Del removes every field named key and returns how many it removed.
func (h *Header) Del(key string) int {
	return h.DelFunc(func(f Field) bool { return strings.EqualFold(f.Name(), key) })
}

// DelFunc removes the fields for which del returns true.
func (h *Header) DelFunc(del func(Field) bool) int {
	out := h.fields[:0]
	n := 0
	for _, f := range h.fields {
		if del(f) {
			n++
			continue
		}
		out = append(out, f)
	}
	clear(h.fields[len(out):])
	h.fields = out
	return n
}

// Size returns the number of bytes WriteTo writes.
func (h *Header) Size() int64 {
	var n int64
	for _, f := range h.fields {
		n += int64(len(f.Raw))
	}
	return n
}

// WriteTo writes the fields, without the empty line that ends the header.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, f := range h.fields {
		m, err := w.Write(f.Raw)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Clone returns a deep copy of h.
func (h *Header) Clone() *Header {
	c := &Header{fields: make([]Field, len(h.fields))}
	for i, f := range h.fields {
		c.fields[i] = Field{Raw: append([]byte(nil), f.Raw...)}
	}
	return c
}

var crlfToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// newField formats "Key: value\r\n", folding at white space so that lines
// stay under 78 characters where possible.
func newField(key, value string) Field {
	// A field name is printable ASCII without colon (RFC 5322 section
	// 2.2); anything else is dropped so a key cannot inject lines either.
	key = strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || r == ':' {
			return -1
		}
		return r
	}, key)
	if key == "" {
		// ": value" would end the header block and turn every later
		// field into body: a bug in the caller, which the chain reports
		// as a failed rule.
		panic("policy: header field without a valid name")
	}
	// The name is kept as written: canonical MIME case would turn
	// "Received-SPF" into "Received-Spf" and "DKIM-Signature" into
	// "Dkim-Signature".
	// Byte-wise, not strings.Map, which would turn 8-bit bytes that are
	// not UTF-8 into U+FFFD.
	value = crlfToSpace.Replace(value)
	var b strings.Builder
	b.WriteString(key)
	b.WriteString(":")
	lineLen := len(key) + 1
	for i, word := range strings.Fields(value) {
		if i > 0 && lineLen+1+len(word) > 78 {
			// Fold with a space, the separator it replaces, so that
			// the unfolded value is the value that was set.
			b.WriteString("\r\n ")
			lineLen = 1
		} else {
			b.WriteByte(' ')
			lineLen++
		}
		b.WriteString(word)
		lineLen += len(word)
	}
	b.WriteString("\r\n")
	return Field{Raw: []byte(b.String())}
}
