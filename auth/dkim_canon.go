package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"hash"
	"io"
	"math/bits"
	"slices"
	"strings"
	"sync"

	"github.com/mtakit/mtakit/policy"
)

// dkBodyHasher canonicalizes a message body as it streams through Write
// and hashes the result (RFC 6376 section 3.4.3 "simple" and 3.4.4
// "relaxed"). Unlike go-msgauth's canonicalizers, which allocate two
// copies of every Write (about 100 MiB of garbage for a 50 MiB message,
// which the GC pacer turns into RSS), it works through fixed buffers, so
// memory stays constant whatever the size of the body.
//
// The output is byte for byte go-msgauth's (its fuzz test checks so): a
// bare LF counts as CRLF, a bare CR stays as it is; relaxed drops the white
// space before a line break, reduces runs of white space to one SP and
// drops the empty lines at the end; simple keeps lines as they are and
// reduces the empty lines at the end to one CRLF.
type dkBodyHasher struct {
	h       hash.Hash
	relaxed bool
	limit   int64 // l=: canonical bytes hashed at most; <0: no limit
	hashed  int64 // canonical bytes given to h so far

	prevCR bool // the last input byte was CR (for the bare LF fix)

	// relaxed: white space seen since the last printable byte, and
	// whether any printable byte came at all (an empty body hashes as
	// nothing, not CRLF).
	wsp, written bool

	// Line breaks (relaxed: CR and LF bytes; simple: CRLF pairs and a
	// last CR) seen since the last printable byte: they are hashed only
	// if something follows them. pend holds the first bytes of them;
	// beyond its size they go into h speculatively, after saving the hash
	// state in saved, which is restored if the body ends there.
	pend    []byte // over pendArr
	pendArr [512]byte
	saved   []byte
	spec    bool  // h holds speculative line breaks (saved is valid)
	specN   int64 // hashed before the speculation began
	simpCR  bool  // simple: a CR is pending, maybe the start of CRLF

	out  [4096]byte // canonical bytes not yet given to h
	nout int
}

var dkBodyHasherPool = sync.Pool{New: func() any { return new(dkBodyHasher) }}

// newDKBodyHasher returns a pooled hasher writing into h; relaxed picks
// the canonicalization, limit the l= tag (negative: none). Give it back
// with free.
func newDKBodyHasher(h hash.Hash, relaxed bool, limit int64) *dkBodyHasher {
	b := dkBodyHasherPool.Get().(*dkBodyHasher)
	saved := b.saved[:0]
	*b = dkBodyHasher{h: h, relaxed: relaxed, limit: limit, saved: saved}
	b.pend = b.pendArr[:0]
	return b
}

func (b *dkBodyHasher) free() {
	b.h = nil
	dkBodyHasherPool.Put(b)
}

// emit adds canonical bytes to the output.
func (b *dkBodyHasher) emit(p []byte) {
	for len(p) > 0 {
		if b.nout == len(b.out) {
			b.flush()
		}
		n := copy(b.out[b.nout:], p)
		b.nout += n
		p = p[n:]
	}
}

func (b *dkBodyHasher) emitByte(c byte) {
	if b.nout == len(b.out) {
		b.flush()
	}
	b.out[b.nout] = c
	b.nout++
}

// flush hands the buffered canonical bytes to the hash, up to the l= limit.
func (b *dkBodyHasher) flush() {
	p := b.out[:b.nout]
	b.nout = 0
	if b.limit >= 0 && int64(len(p)) > b.limit-b.hashed {
		p = p[:b.limit-b.hashed]
	}
	b.h.Write(p)
	b.hashed += int64(len(p))
}

// pendBreak records line-break bytes that are hashed only if a printable
// byte follows.
func (b *dkBodyHasher) pendBreak(p string) {
	if len(b.pend)+len(p) > cap(b.pend) {
		b.speculate()
	}
	b.pend = append(b.pend, p...)
}

// speculate moves the pending line breaks into the hash after saving its
// state: a body may end in megabytes of empty lines, which must not be
// held in memory.
func (b *dkBodyHasher) speculate() {
	if !b.spec {
		b.flush()
		if m, ok := b.h.(encoding.BinaryAppender); ok {
			s, err := m.AppendBinary(b.saved[:0])
			if err == nil {
				b.saved, b.spec, b.specN = s, true, b.hashed
			}
		}
		if !b.spec {
			// A hash that cannot save its state: the breaks stay in
			// memory (pend grows), as go-msgauth keeps them.
			return
		}
	}
	b.emit(b.pend)
	b.pend = b.pend[:0]
}

// commitBreaks hashes the pending line breaks: a printable byte follows.
func (b *dkBodyHasher) commitBreaks() {
	b.spec = false
	if len(b.pend) > 0 {
		b.emit(b.pend)
		b.pend = b.pend[:0]
	}
}

// dropBreaks forgets the pending line breaks: the body ends with them.
func (b *dkBodyHasher) dropBreaks() error {
	b.pend = b.pend[:0]
	if b.spec {
		b.nout = 0
		b.spec = false
		b.hashed = b.specN
		if err := b.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(b.saved); err != nil {
			return err
		}
	}
	return nil
}

func (b *dkBodyHasher) Write(p []byte) (int, error) {
	if b.relaxed {
		b.writeRelaxed(p)
		return len(p), nil
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		prevCR := b.prevCR
		b.prevCR = c == '\r'
		if c == '\n' && !prevCR {
			b.byteIn('\r')
		}
		b.byteIn(c)
		if b.prevCR || c == '\n' || b.simpCR {
			continue
		}
		// c was an ordinary byte, now hashed: the ordinary bytes after it
		// go to the output as they are.
		j := i + 1
		for j < len(p) && p[j] != '\r' && p[j] != '\n' {
			j++
		}
		b.emit(p[i+1 : j])
		i = j - 1
	}
	return len(p), nil
}

// Byte classes of the relaxed body canonicalization.
const (
	dkOrd = iota // copied as it is
	dkWSP        // SP or HTAB: a run of them becomes one SP, or nothing before a line break
	dkCR         // line-break bytes: held until something printable follows
	dkLF
)

var dkRelaxedClass = [256]uint8{' ': dkWSP, '\t': dkWSP, '\r': dkCR, '\n': dkLF}

// writeRelaxed is Write for the relaxed canonicalization. It works a run at
// a time rather than a byte at a time: text is mostly ordinary bytes and
// single spaces, which the canonicalization leaves as they are, so a whole
// line of prose or base64 is found by dkRelaxedRun and copied at once; only
// the bytes that change something (white space runs, tabs, line breaks) take
// the slow way, with the same state (wsp, pending breaks, prevCR) the byte
// at a time version kept, so the output does not depend on where writes
// split.
func (b *dkBodyHasher) writeRelaxed(p []byte) {
	for i := 0; i < len(p); {
		switch dkRelaxedClass[p[i]] {
		case dkWSP:
			b.wsp = true
			b.prevCR = false
			i++
		case dkCR:
			b.wsp = false
			if i+1 < len(p) && p[i+1] == '\n' {
				b.pendBreak("\r\n")
				b.prevCR = false
				i += 2
				continue
			}
			b.pendBreak("\r")
			b.prevCR = true
			i++
		case dkLF:
			b.wsp = false
			if b.prevCR {
				b.pendBreak("\n")
			} else {
				b.pendBreak("\r\n") // a bare LF counts as CRLF
			}
			b.prevCR = false
			i++
		default:
			b.commitBreaks()
			if b.wsp {
				b.emitByte(' ')
				b.wsp = false
			}
			j := dkRelaxedRun(p, i+1)
			if n := copy(b.out[b.nout:], p[i:j]); n == j-i {
				b.nout += n
			} else {
				b.emit(p[i:j])
			}
			b.written = true
			b.prevCR = false
			i = j
		}
	}
}

// dkRelaxedRun returns the end of the run of p from j on that relaxed
// canonicalization copies unchanged: ordinary bytes, and single SPs with an
// ordinary byte after them (the last byte of the run is ordinary).
func dkRelaxedRun(p []byte, j int) int {
	// Eight bytes at a time: the mask marks the bytes below '!' (SP,
	// HTAB, CR, LF and the other controls); a borrow can mark a byte
	// wrongly only above a byte rightly marked, so the lowest mark is
	// exact. Most words and all of base64 have none.
	for j+8 <= len(p) {
		x := binary.LittleEndian.Uint64(p[j:])
		mask := (x - 0x2121212121212121) &^ x & 0x8080808080808080
		if mask == 0 {
			j += 8
			continue
		}
		j += bits.TrailingZeros64(mask) >> 3
		if !dkRelaxedCopies(p, j) {
			return j
		}
		j++
		if p[j-1] == ' ' {
			j++
		}
	}
	for j < len(p) && dkRelaxedCopies(p, j) {
		j++
		if p[j-1] == ' ' {
			j++
		}
	}
	return j
}

// dkRelaxedCopies reports whether p[j] is copied unchanged: an ordinary
// byte, or a single SP before an ordinary byte (then both are).
func dkRelaxedCopies(p []byte, j int) bool {
	switch dkRelaxedClass[p[j]] {
	case dkOrd:
		return true
	case dkWSP:
		return p[j] == ' ' && j+1 < len(p) && dkRelaxedClass[p[j+1]] == dkOrd
	}
	return false
}

// byteIn takes one byte of the body after the bare LF fix (simple; the
// relaxed canonicalization is writeRelaxed's).
func (b *dkBodyHasher) byteIn(c byte) {
	if b.simpCR {
		b.simpCR = false
		if c == '\n' {
			b.pendBreak("\r\n")
			return
		}
		// A bare CR is a printable byte for simple.
		b.commitBreaks()
		b.emitByte('\r')
	}
	if c == '\r' {
		b.simpCR = true
		return
	}
	b.commitBreaks()
	b.emitByte(c)
}

// Sum ends the body and returns its hash.
func (b *dkBodyHasher) Sum() ([]byte, error) { return b.sumInto(nil) }

// sumInto is Sum appending the hash to dst.
func (b *dkBodyHasher) sumInto(dst []byte) ([]byte, error) {
	if b.relaxed {
		if err := b.dropBreaks(); err != nil {
			return nil, err
		}
		if b.written {
			b.emit([]byte("\r\n"))
		}
	} else {
		if b.simpCR {
			b.commitBreaks()
			b.emitByte('\r')
		} else if err := b.dropBreaks(); err != nil {
			return nil, err
		}
		b.emit([]byte("\r\n"))
	}
	b.flush()
	return b.h.Sum(dst), nil
}

var _ io.Writer = (*dkBodyHasher)(nil)

// dkRelaxedField canonicalizes one header field given as its raw bytes,
// name, value, folding and final line break, as RFC 6376 section 3.4.2
// "relaxed" says (and as go-msgauth does: every run of white space, line
// breaks included, becomes one SP); dkAppendRelaxedHeader does the work.
func dkRelaxedField(raw []byte) string { return string(dkAppendRelaxedHeader(nil, raw)) }

// dkRelaxedHeader is dkRelaxedField for a field given as a string.
func dkRelaxedHeader(raw string) string { return dkRelaxedField([]byte(raw)) }

// dkAppendRelaxedHeader appends the relaxed form of the field raw to dst,
// as go-msgauth's strings.Cut, ToLower, TrimSpace and FieldsFunc make it:
// the name lowercased and trimmed, then ':', then the value with its runs
// of SP, HTAB, CR and LF made one SP and none at either end, then CRLF. It
// works on bytes; the separators are ASCII, which no UTF-8 sequence (valid
// or not) contains, so the result is the same. A name that is not ASCII
// takes go-msgauth's own string functions.
func dkAppendRelaxedHeader(dst, raw []byte) []byte {
	name, value, colon := bytes.Cut(raw, []byte{':'})
	if dkIsASCII(name) {
		name = bytes.TrimSpace(name)
		for _, c := range name {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
		}
	} else {
		dst = append(dst, strings.TrimSpace(strings.ToLower(string(name)))...)
	}
	dst = append(dst, ':')
	if colon {
		for first := true; ; first = false {
			i := 0
			for i < len(value) && dkRelaxedClass[value[i]] != dkOrd {
				i++
			}
			if value = value[i:]; len(value) == 0 {
				break
			}
			if !first {
				dst = append(dst, ' ')
			}
			j := 0
			for j < len(value) && dkRelaxedClass[value[j]] == dkOrd {
				j++
			}
			dst = append(dst, value[:j]...)
			value = value[j:]
		}
	}
	return append(dst, '\r', '\n')
}

func dkIsASCII[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// dkNames holds the names of a header's fields, found once per message
// rather than once per name compared with them.
type dkNames struct {
	names [][]byte
	ascii bool // all names are ASCII
}

// load finds the names of fields as policy.Field.Name gives them (up to
// the colon, without the SP and HTAB before it; empty without a colon),
// and with strings.TrimSpace applied too when trim is set.
func (d *dkNames) load(fields []policy.Field, trim bool) {
	d.names, d.ascii = d.names[:0], true
	for _, f := range fields {
		var n []byte
		if i := bytes.IndexByte(f.Raw, ':'); i >= 0 {
			n = bytes.TrimRight(f.Raw[:i], " \t")
		}
		if trim {
			n = bytes.TrimSpace(n)
		}
		d.ascii = d.ascii && dkIsASCII(n)
		d.names = append(d.names, n)
	}
}

// reset drops the references to the fields.
func (d *dkNames) reset() {
	clear(d.names)
	d.names = d.names[:0]
}

// count returns how many names lowercase to what name does (nameASCII
// tells whether it is ASCII).
func (d *dkNames) count(name string, nameASCII bool) int {
	c := 0
	for _, n := range d.names {
		if dkLowerEqual(n, d.ascii, name, nameASCII) {
			c++
		}
	}
	return c
}

// dkLowerEqual reports whether strings.ToLower(string(a)) ==
// strings.ToLower(b), without allocating when both are ASCII (then it is
// ASCII case folding, which bytes.EqualFold does on ASCII input; the
// conversions to []byte are zero-copy, and the length test is only a
// shortcut); aASCII and bASCII say whether they are.
func dkLowerEqual[T string | []byte](a T, aASCII bool, b string, bASCII bool) bool {
	if aASCII && bASCII {
		return len(a) == len(b) && bytes.EqualFold([]byte(a), []byte(b))
	}
	return strings.ToLower(string(a)) == strings.ToLower(b)
}

// dkFoldEqualLower reports whether strings.EqualFold(string(a),
// strings.ToLower(b)), without allocating when both are ASCII (then a
// rune of one can only fold to its ASCII case partner in the other, and
// bytes.EqualFold of a and b is the same).
func dkFoldEqualLower(a []byte, aASCII bool, b string, bASCII bool) bool {
	if aASCII && bASCII {
		return len(a) == len(b) && bytes.EqualFold(a, []byte(b))
	}
	return strings.EqualFold(string(a), strings.ToLower(b))
}

// dkHashBodyInto appends to dst the hash (SHA-256) of body under the
// relaxed canonicalization, the one the signer uses. Reading stops when
// ctx is done.
func dkHashBodyInto(ctx context.Context, body io.Reader, dst []byte) ([]byte, error) {
	bufp := dkReadBufPool.Get().(*[]byte)
	defer dkReadBufPool.Put(bufp)
	b := newDKBodyHasher(sha256.New(), true, -1)
	defer b.free()
	if _, err := io.CopyBuffer(b, dkCtxReader{ctx, body}, *bufp); err != nil {
		return nil, err
	}
	return b.sumInto(dst)
}

// dkReadBufPool holds the buffers bodies are read through.
var dkReadBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// dkHeaderScratch is the reused state of dkHashHeaders and of the
// verifier's header hash.
type dkHeaderScratch struct {
	names dkNames
	buf   []byte
	tmp   []byte
	taken []dkTaken
}

// dkTaken counts the fields of one name (as strings.ToLower makes it)
// already hashed.
type dkTaken struct {
	key string
	n   int
}

var dkHeaderScratchPool = sync.Pool{New: func() any { return new(dkHeaderScratch) }}

// dkHashHeaders writes to h the canonical form (canon appends it) of the
// fields of hdr named in keys, in order; each name takes the last of its
// fields not yet taken, a name without one more field is skipped (RFC 6376
// section 5.4.2). A field matches a key when strings.EqualFold of its
// trimmed name and the lowercased key holds (dkFoldEqualLower), and keys
// share their count when they lowercase alike (dkLowerEqual), as
// go-msgauth's header picker has it; the h= lists are short, so a slice
// searched from the start does that without a map.
func dkHashHeaders(h io.Writer, hdr []policy.Field, keys []string, canon func(dst, raw []byte) []byte) {
	sc := dkHeaderScratchPool.Get().(*dkHeaderScratch)
	sc.buf = sc.appendHeaders(sc.buf[:0], hdr, keys, canon)
	h.Write(sc.buf)
	sc.release()
}

// appendHeaders appends to dst what dkHashHeaders hashes.
func (sc *dkHeaderScratch) appendHeaders(dst []byte, hdr []policy.Field, keys []string, canon func(dst, raw []byte) []byte) []byte {
	taken := sc.taken[:0]
	sc.names.load(hdr, true)
	names := &sc.names
	for _, k := range keys {
		kASCII := dkIsASCII(k)
		t := slices.IndexFunc(taken, func(t dkTaken) bool { return dkLowerEqual(t.key, dkIsASCII(t.key), k, kASCII) })
		if t < 0 {
			taken = append(taken, dkTaken{key: k})
			t = len(taken) - 1
		}
		skip := taken[t].n
		for i := len(hdr) - 1; i >= 0; i-- {
			if !dkFoldEqualLower(names.names[i], names.ascii, k, kASCII) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			taken[t].n++
			dst = canon(dst, hdr[i].Raw)
			break
		}
	}
	clear(taken)
	names.reset()
	sc.taken = taken[:0]
	return dst
}

// release gives sc back to the pool; sc.buf and sc.tmp hold the buffers
// to keep.
func (sc *dkHeaderScratch) release() {
	if cap(sc.buf) > 64<<10 {
		sc.buf = nil // a huge header's buffer is not kept
	}
	if cap(sc.tmp) > 64<<10 {
		sc.tmp = nil
	}
	dkHeaderScratchPool.Put(sc)
}

// dkSigFieldWriter writes the tags of a DKIM-Signature field as
// go-msgauth's formatHeaderParams does: " name=value;" each, a line break
// before a tag that would take the line past 75 columns.
type dkSigFieldWriter struct {
	buf  []byte
	line int // where the current line's tags start in buf
}

func (f *dkSigFieldWriter) tag(k string, v []byte) {
	if 3+len(f.buf)-f.line+len(v)+len(k) > 75 {
		f.buf = append(f.buf, "\r\n"...)
		f.line = len(f.buf)
	}
	f.buf = append(f.buf, ' ')
	f.buf = append(f.buf, k...)
	f.buf = append(f.buf, '=')
	f.buf = append(f.buf, v...)
	f.buf = append(f.buf, ';')
}

// dkAppendB appends the last lines of a DKIM-Signature field, " b=" and
// the signature b folded every 75 bytes, and the final CRLF.
func dkAppendB(dst []byte, b string) []byte {
	const head = " b="
	n := min(75, len(head)+len(b))
	dst = append(dst, head...)
	dst = append(dst, b[:n-len(head)]...)
	for b = b[n-len(head):]; b != ""; b = b[n:] {
		n = min(75, len(b))
		dst = append(dst, "\r\n "...)
		dst = append(dst, b[:n]...)
	}
	return append(dst, '\r', '\n')
}
