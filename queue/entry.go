package queue

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"

	"github.com/mtakit/mtakit/internal/msgsrc"
)

// An entry file holds one queued message and its envelope, so that
// accepting a message creates one file (file creation is the dominant cost
// of a spool, far more than writing or renaming):
//
//	"MTAQ2 " <16 hex digits: message length> "\n"     (entryHeadLen bytes)
//	<the message as received>
//	records, each: "E " <8 hex: JSON length> " " <8 hex: CRC-32C of JSON> "\n" <envelope JSON>
//
// The last valid record is the current envelope. A change of envelope
// appends a record (and a move between queues renames the file), never
// rewriting bytes already written; a record torn by a crash fails its
// length or checksum and is ignored, along with anything after it, so the
// envelope read back is the last one whose append was made durable. Header
// edits of postq rules are stored in the envelope (Envelope.Head), and the
// stored message is only read, never rewritten, unless a rule replaced the
// body.
const (
	entryMagic    = "MTAQ2 "
	entryHeadLen  = len(entryMagic) + 16 + 1
	recHeadLen    = 2 + 8 + 1 + 8 + 1
	entrySuffix   = ".q"
	maxRecordsLen = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func entryHeader(msgLen int64) []byte {
	b := make([]byte, 0, entryHeadLen)
	b = append(b, entryMagic...)
	b = fmt.Appendf(b, "%016x\n", msgLen)
	return b
}

// encodeRecord returns env as an entry record.
func encodeRecord(env *Envelope) ([]byte, error) {
	js, err := env.Encode()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, recHeadLen+len(js))
	b = fmt.Appendf(b, "E %08x %08x\n", len(js), crc32.Checksum(js, castagnoli))
	return append(b, js...), nil
}

// parseRecords returns the last valid envelope of the records in b and the
// length of the valid prefix of b (where the next record goes). Parsing
// stops at the first torn or damaged record.
func parseRecords(b []byte) (last []byte, valid int) {
	for len(b)-valid >= recHeadLen {
		h := b[valid : valid+recHeadLen]
		if h[0] != 'E' || h[1] != ' ' || h[10] != ' ' || h[19] != '\n' {
			break
		}
		n, err1 := strconv.ParseUint(string(h[2:10]), 16, 32)
		sum, err2 := strconv.ParseUint(string(h[11:19]), 16, 32)
		if err1 != nil || err2 != nil || uint64(len(b)-valid-recHeadLen) < n {
			break
		}
		js := b[valid+recHeadLen : valid+recHeadLen+int(n)]
		if crc32.Checksum(js, castagnoli) != uint32(sum) {
			break
		}
		last, valid = js, valid+recHeadLen+int(n)
	}
	return last, valid
}

// readEntry reads the current envelope of the entry file f of id; env.end
// is set to the end of its valid records.
func readEntry(f *os.File, id string) (*Envelope, error) {
	var h [entryHeadLen]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: %s: truncated entry", ErrCorrupt, id)
		}
		return nil, err
	}
	if string(h[:len(entryMagic)]) != entryMagic || h[entryHeadLen-1] != '\n' {
		return nil, fmt.Errorf("%w: %s: not a queue entry", ErrCorrupt, id)
	}
	msgLen, err := strconv.ParseInt(string(h[len(entryMagic):entryHeadLen-1]), 16, 64)
	if err != nil || msgLen < 0 {
		return nil, fmt.Errorf("%w: %s: bad message length", ErrCorrupt, id)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Compare before adding: a damaged length near 2^63 would overflow
	// start and make the tail length negative (a panic in make).
	if msgLen > st.Size()-int64(entryHeadLen) {
		return nil, fmt.Errorf("%w: %s: entry has %d bytes, message %d", ErrCorrupt, id, st.Size(), msgLen)
	}
	start := int64(entryHeadLen) + msgLen
	if st.Size()-start > maxRecordsLen {
		return nil, fmt.Errorf("%w: %s: entry has %d bytes, message %d", ErrCorrupt, id, st.Size(), msgLen)
	}
	tail := make([]byte, st.Size()-start)
	if _, err := f.ReadAt(tail, start); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	last, valid := parseRecords(tail)
	if last == nil {
		return nil, fmt.Errorf("%w: %s: no envelope record", ErrCorrupt, id)
	}
	env, err := DecodeEnvelope(last)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	switch {
	case env.ID != id:
		return nil, fmt.Errorf("%w: envelope of %s says id %q", ErrCorrupt, id, env.ID)
	case env.Size != msgLen:
		return nil, fmt.Errorf("%w: message of %s has %d bytes, envelope says %d", ErrCorrupt, id, msgLen, env.Size)
	}
	env.end = start + int64(valid)
	return env, nil
}

// msgSrc is the stored form of a loaded message (see msgsrc.Src) over
// the entry's file. The spool recognises it in Save to tell a header edit
// (stored in the envelope) from a new body (a new entry file).
type msgSrc struct {
	msgsrc.Src
	env *Envelope
}
