// Package msgsrc is the stored form of a message loaded from a queue store
// (the spool, the journal, the JetStream store): the header block postq
// rules rewrote, if any, followed by the stored message from the end of
// its original header block on, read in place from the store's file.
package msgsrc

import (
	"errors"
	"io"
)

// Src reads Head followed by the stored message from byte Base on; the
// stored message is the Stored bytes of File from offset Off. With Head
// nil and Base 0 it is the stored message as it was accepted.
type Src struct {
	Head   []byte      // the rewritten header block, or nil
	Base   int64       // offset in the stored message of what follows Head
	File   io.ReaderAt // holds the stored message
	Off    int64       // where the stored message starts in File
	Stored int64       // the stored message's length
}

// Size is the length of what s reads.
func (s *Src) Size() int64 { return int64(len(s.Head)) + s.Stored - s.Base }

// ReadAt implements io.ReaderAt.
func (s *Src) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("msgsrc: negative offset")
	}
	n := 0
	head := int64(len(s.Head))
	if off < head {
		n = copy(p, s.Head[off:])
		if n == len(p) {
			return n, nil
		}
		off = head
	}
	rest := s.Stored - s.Base - (off - head)
	if rest <= 0 {
		return n, io.EOF
	}
	q := p[n:]
	short := false
	if int64(len(q)) > rest {
		q, short = q[:rest], true
	}
	k, err := s.File.ReadAt(q, s.Off+s.Base+off-head)
	n += k
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// InStored returns where byte off of s lies in the stored message, and
// false when it lies in Head (or before it).
func (s *Src) InStored(off int64) (int64, bool) {
	head := int64(len(s.Head))
	if off < head {
		return 0, false
	}
	return s.Base + off - head, true
}
