package policy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"sync"
)

// Message is the message view rules read and edit at the preq and postq
// stages. The header is parsed and editable; the body stays where it is
// stored (a spool file) and is streamed on demand, so a 50 MiB message costs
// no more memory than a small one.
//
// A Message is not safe for concurrent use; the chain runs the rules of one
// message one at a time.
type Message struct {
	// Header is the header block; edits show in Reader and WriteTo.
	Header *Header

	src     io.ReaderAt // the stored message, header included
	bodyOff int64       // where the body starts in src
	bodyLen int64
	sep     bool // the stored header ended with an empty line
	closers []io.Closer
}

// MaxHeaderBytes bounds the header block NewMessage parses.
const MaxHeaderBytes = 1 << 20

// NewMessage parses the header of the message stored in src (size bytes) and
// keeps the body in place. src must stay readable until the Message is
// closed; closer, if not nil, is closed with it (the spool file).
func NewMessage(src io.ReaderAt, size int64, closer io.Closer) (*Message, error) {
	m := &Message{}
	if err := m.load(src, size); err != nil {
		return nil, err
	}
	if closer != nil {
		m.closers = append(m.closers, closer)
	}
	return m, nil
}

// headerReaders recycles the buffers headers are parsed through (ReadHeader
// copies what it keeps): one per message would be most of what receiving a
// small message allocates.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

func (m *Message) load(src io.ReaderAt, size int64) error {
	br := headerReaders.Get().(*bufio.Reader)
	br.Reset(io.NewSectionReader(src, 0, size))
	h, n, sep, err := ReadHeader(br, MaxHeaderBytes)
	br.Reset(nil)
	headerReaders.Put(br)
	if err != nil {
		return err
	}
	m.Header, m.src, m.bodyOff, m.bodyLen, m.sep = h, src, n, size-n, sep
	return nil
}

// Body returns a reader of the body from its start; each call gives a new,
// independent reader.
func (m *Message) Body() io.Reader { return io.NewSectionReader(m.src, m.bodyOff, m.bodyLen) }

// blankLine reports whether the empty line that ends the header is written
// after it: when it was stored, or when there is no body to tell apart.
// Size, Reader and WriteTo must agree on it.
func (m *Message) blankLine() bool { return m.sep || m.bodyLen == 0 }

// BodySize returns the size of the body in bytes.
func (m *Message) BodySize() int64 { return m.bodyLen }

// Size returns the size of the whole message as Reader would produce it.
func (m *Message) Size() int64 {
	n := m.Header.Size() + m.bodyLen
	if m.blankLine() {
		n += 2
	}
	return n
}

// Reader returns a reader of the whole message with the current header.
// Each call gives a new reader; the header is copied, so later edits do not
// show in a reader already returned.
func (m *Message) Reader() io.Reader {
	hb := make([]byte, 0, m.Header.Size()+2)
	for _, f := range m.Header.fields {
		hb = append(hb, f.Raw...)
	}
	if m.blankLine() {
		hb = append(hb, '\r', '\n')
	}
	return io.MultiReader(bytes.NewReader(hb), m.Body())
}

// WriteTo writes the whole message with the current header to w, through
// a pooled buffer (io.Copy would allocate 32 KiB per message).
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	n, err := m.Header.WriteTo(w)
	if err != nil {
		return n, err
	}
	if m.blankLine() {
		k, err := io.WriteString(w, "\r\n")
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	body := m.Body()
	if bw, ok := w.(*bufio.Writer); ok {
		k, err := bw.ReadFrom(body) // reads straight into its buffer
		return n + k, err
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	k, err := io.CopyBuffer(onlyWriter{w}, body, *buf)
	return n + k, err
}

// onlyWriter hides a ReaderFrom, so that io.CopyBuffer uses the buffer.
type onlyWriter struct{ io.Writer }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Replace makes the message the one stored in src, for example the copy a
// content filter sent back. The old storage is kept open until Close, as a
// reader returned earlier may still use it; closer is closed with the
// message.
func (m *Message) Replace(src io.ReaderAt, size int64, closer io.Closer) error {
	if err := m.load(src, size); err != nil {
		return err
	}
	if closer != nil {
		m.closers = append(m.closers, closer)
	}
	return nil
}

// Close releases the storage of the message.
func (m *Message) Close() error {
	var errs []error
	for _, c := range m.closers {
		errs = append(errs, c.Close())
	}
	m.closers = nil
	return errors.Join(errs...)
}
