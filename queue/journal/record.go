package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A segment file is a sequence of records, each:
//
//	header (headLen bytes, little endian):
//	  0  "MJ"          magic
//	  2  type          recFull, recState, recDone or recPad
//	  3  0             reserved
//	  4  uint32        meta length
//	  8  uint64        body length (recFull: the message; recPad: skipped bytes)
//	  16 uint64        sequence number (unique, increasing across the journal)
//	  24 uint32        CRC-32C of the body (recFull; else 0)
//	  28 uint32        CRC-32C of the segment's number (8 bytes), header
//	                   bytes 0..28 and the meta
//	meta:
//	  uint16 len, ID; uint16 len, queue
//	  recState only: uint64 body segment, uint64 body offset, uint64 body length
//	  recFull, recState: the envelope (queue.Envelope JSON)
//	body (recFull): the message
//
// The rest of a segment after its last record is zeros (a new segment is
// zero-filled before use) or the records of the file's earlier use (a
// compacted segment's file is reused under a new number): a zero header
// ends the scan, and so does any header or body that fails its checksum
// (a write a crash tore, or a record of the earlier use, whose header
// checksum was seeded with another segment number).
const (
	headLen = 32
	magic0  = 'M'
	magic1  = 'J'

	recFull  = 1 // a message and its envelope: accepted, added, its body replaced, or copied forward
	recState = 2 // a new envelope (and queue) of a message whose body is in an earlier record
	recDone  = 3 // the message was removed
	recPad   = 4 // a reserved range whose write failed: skipped

	// maxMeta bounds the meta part (ID, queue, envelope) of a record.
	maxMeta = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// bodyRef locates a message body: bytes [off, off+n) of segment seg.
type bodyRef struct {
	seg uint64
	off int64
	n   int64
}

// record is one record as parsed (or to be written).
type record struct {
	typ     byte
	seq     uint64
	id, q   string
	ref     bodyRef // recState: where the body is
	env     []byte  // recFull, recState
	bodyLen int64   // recFull: message length; recPad: bytes skipped
	bodyCRC uint32
}

// metaLen returns the length of r's meta part.
func (r *record) metaLen() int {
	n := 2 + len(r.id) + 2 + len(r.q) + len(r.env)
	if r.typ == recState {
		n += 24
	}
	return n
}

// size returns the length of the whole record.
func (r *record) size() int64 { return headLen + int64(r.metaLen()) + r.bodyLen }

// appendMeta appends r's meta part to b.
func (r *record) appendMeta(b []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.id)))
	b = append(b, r.id...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.q)))
	b = append(b, r.q...)
	if r.typ == recState {
		b = binary.LittleEndian.AppendUint64(b, r.ref.seg)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.ref.off))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.ref.n))
	}
	return append(b, r.env...)
}

// seed returns the CRC-32C of segment number seg, where a record's header
// checksum starts.
func seed(seg uint64) uint32 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seg)
	return crc32.Update(0, castagnoli, b[:])
}

// header returns r's header in segment seg, meta being its meta part.
func (r *record) header(seg uint64, meta []byte) []byte {
	h := make([]byte, headLen)
	r.putHeader(h, seg, meta)
	return h
}

// putHeader writes r's header in segment seg, meta being its meta part,
// into h (headLen bytes).
func (r *record) putHeader(h []byte, seg uint64, meta []byte) {
	h[0], h[1], h[2] = magic0, magic1, r.typ
	binary.LittleEndian.PutUint32(h[4:], uint32(len(meta)))
	binary.LittleEndian.PutUint64(h[8:], uint64(r.bodyLen))
	binary.LittleEndian.PutUint64(h[16:], r.seq)
	binary.LittleEndian.PutUint32(h[24:], r.bodyCRC)
	c := crc32.Update(seed(seg), castagnoli, h[:28])
	c = crc32.Update(c, castagnoli, meta)
	binary.LittleEndian.PutUint32(h[28:], c)
}

// padHeader returns the header of a pad record n bytes long in all, in
// segment seg.
func padHeader(seg, seq uint64, n int64) []byte {
	r := record{typ: recPad, seq: seq, bodyLen: n - headLen}
	return r.header(seg, nil)
}

var (
	// errEnd: a zero header, where the written part of a segment ends.
	errEnd = errors.New("journal: end of records")
	// errBadRecord: a header or meta that fails its checks.
	errBadRecord = errors.New("journal: bad record")
)

// parseHeader checks the fixed part of a header and returns the record's
// type, meta length, body length, sequence and body CRC. The meta is
// checked by parseMeta, against the header's CRC.
func parseHeader(h []byte) (r record, metaLen int, err error) {
	if len(h) < headLen {
		return r, 0, errBadRecord
	}
	if allZero(h[:headLen]) {
		return r, 0, errEnd
	}
	if h[0] != magic0 || h[1] != magic1 || h[3] != 0 {
		return r, 0, errBadRecord
	}
	r.typ = h[2]
	if r.typ < recFull || r.typ > recPad {
		return r, 0, errBadRecord
	}
	ml := binary.LittleEndian.Uint32(h[4:])
	bl := binary.LittleEndian.Uint64(h[8:])
	if ml > maxMeta || bl > 1<<50 {
		return r, 0, errBadRecord
	}
	r.bodyLen = int64(bl)
	r.seq = binary.LittleEndian.Uint64(h[16:])
	r.bodyCRC = binary.LittleEndian.Uint32(h[24:])
	switch r.typ {
	case recPad:
		if ml != 0 {
			return r, 0, errBadRecord
		}
	case recState, recDone:
		if bl != 0 {
			return r, 0, errBadRecord
		}
	}
	return r, int(ml), nil
}

// parseMeta checks meta against header h's CRC (a record of segment seg)
// and fills in r from it.
func parseMeta(seg uint64, h []byte, meta []byte, r *record) error {
	c := crc32.Update(seed(seg), castagnoli, h[:28])
	c = crc32.Update(c, castagnoli, meta)
	if c != binary.LittleEndian.Uint32(h[28:]) {
		return fmt.Errorf("%w: header checksum", errBadRecord)
	}
	if r.typ == recPad {
		return nil
	}
	b := meta
	str := func() (string, bool) {
		if len(b) < 2 {
			return "", false
		}
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			return "", false
		}
		s := string(b[2 : 2+n])
		b = b[2+n:]
		return s, true
	}
	var ok bool
	if r.id, ok = str(); !ok || r.id == "" {
		return fmt.Errorf("%w: meta", errBadRecord)
	}
	if r.q, ok = str(); !ok {
		return fmt.Errorf("%w: meta", errBadRecord)
	}
	if r.typ == recState {
		if len(b) < 24 {
			return fmt.Errorf("%w: meta", errBadRecord)
		}
		r.ref.seg = binary.LittleEndian.Uint64(b)
		off := binary.LittleEndian.Uint64(b[8:])
		n := binary.LittleEndian.Uint64(b[16:])
		if off > 1<<50 || n > 1<<50 {
			return fmt.Errorf("%w: body reference", errBadRecord)
		}
		r.ref.off, r.ref.n = int64(off), int64(n)
		b = b[24:]
	}
	if r.typ == recDone {
		if len(b) != 0 {
			return fmt.Errorf("%w: meta", errBadRecord)
		}
		return nil
	}
	if r.q == "" || len(b) == 0 {
		return fmt.Errorf("%w: meta", errBadRecord)
	}
	r.env = b
	return nil
}

// parseRecord parses the record at the start of b, which holds it whole
// (body included), and returns it with its length. The scan of a segment
// (scan) reads bodies in pieces instead; this is its in-memory form, for
// the fuzz test and the tests.
func parseRecord(b []byte, seg uint64) (record, int64, error) {
	r, ml, err := parseHeader(b)
	if err != nil {
		return r, 0, err
	}
	if int64(len(b)-headLen) < int64(ml) {
		return r, 0, fmt.Errorf("%w: truncated", errBadRecord)
	}
	if err := parseMeta(seg, b[:headLen], b[headLen:headLen+ml], &r); err != nil {
		return r, 0, err
	}
	n := int64(headLen+ml) + r.bodyLen
	if int64(len(b)) < n {
		return r, 0, fmt.Errorf("%w: truncated", errBadRecord)
	}
	if r.typ == recFull && crc32.Checksum(b[headLen+ml:n], castagnoli) != r.bodyCRC {
		return r, 0, fmt.Errorf("%w: body checksum", errBadRecord)
	}
	return r, n, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// crcOf returns the CRC-32C of b.
func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
