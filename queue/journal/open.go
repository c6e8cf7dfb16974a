package journal

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mtakit/mtakit/queue"
)

// scanned is a record found by the scan of a segment.
type scanned struct {
	r   record
	sg  *segment
	off int64
}

// load reads every segment of the directory and rebuilds the index: for
// each ID, the record with the highest sequence decides (a done record:
// removed). Writing starts in a new segment.
func (s *Store) load(ctx context.Context) error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var nums []uint64
	for _, de := range ents {
		name := de.Name()
		if strings.HasSuffix(name, tmpSuffix) {
			os.Remove(filepath.Join(s.dir, name)) // a segment being prepared
			continue
		}
		if strings.HasSuffix(name, freeSuffix) {
			p := filepath.Join(s.dir, name)
			if fi, err := de.Info(); err == nil && de.Type().IsRegular() && fi.Size() == s.segSize && len(s.free) < maxFree {
				s.free = append(s.free, p)
			} else {
				os.Remove(p)
			}
			continue
		}
		if n, ok := parseSegName(name); ok && de.Type().IsRegular() {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	best := map[string]scanned{}
	bodies := map[bodyRef]bool{}
	for _, n := range nums {
		if err := ctx.Err(); err != nil {
			return err
		}
		path := filepath.Join(s.dir, segName(n))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		sg := newSegment(n, path, f, st.Size(), s.dsync, s.ds)
		sg.sealed, sg.next = true, st.Size()
		s.segs[n] = sg
		s.nextNum.Store(max(s.nextNum.Load(), n+1))
		err = scanSegment(f, st.Size(), n, func(r record, off int64) {
			s.seq = max(s.seq, r.seq)
			if sg.minSeq == 0 || r.seq < sg.minSeq {
				sg.minSeq = r.seq
			}
			sg.maxSeq = max(sg.maxSeq, r.seq)
			switch r.typ {
			case recPad:
				return
			case recDone:
				sg.dones[r.id] = max(sg.dones[r.id], r.seq)
			case recFull:
				bodies[bodyRef{seg: n, off: off + headLen + int64(r.metaLen()), n: r.bodyLen}] = true
				fallthrough
			default:
				if _, ok := sg.ids[r.id]; !ok {
					s.recs[r.id]++
				}
				sg.ids[r.id] = max(sg.ids[r.id], r.seq)
			}
			if b, ok := best[r.id]; !ok || r.seq > b.r.seq {
				best[r.id] = scanned{r, sg, off}
			}
		})
		if err != nil {
			var bad *damaged
			if !errors.As(err, &bad) {
				return fmt.Errorf("journal: reading %s: %w", path, err)
			}
			if bad.off > 0 {
				s.log.Info("journal: the records of a segment end at one that does not check: the rest of a reused file, or a write a crash cut short (not acknowledged); what follows is ignored",
					"segment", path, "offset", bad.off, "error", bad.err)
			}
		}
	}
	for id, b := range best {
		r := b.r
		if r.typ == recDone || !queue.ValidID(id) {
			continue
		}
		e := &entry{id: id}
		if r.typ == recState {
			if s.segs[r.ref.seg] == nil {
				// Its body's segment was compacted away: the message was
				// removed (its done record lost in a crash) or copied
				// forward (the copy is newer). Nothing to do.
				continue
			}
			if !bodies[r.ref] {
				e.bad = fmt.Errorf("%w: message %s: no body at %d in segment %d", queue.ErrCorrupt, id, r.ref.off, r.ref.seg)
			}
		}
		if err := checkQueue(r.q); err != nil {
			r.q = queue.Corrupt
		}
		bad := e.bad
		b.sg.writing++ // apply lowers it
		s.apply(e, &r, b.sg, b.off)
		e.bad = bad
		s.entries[id] = e
	}
	for _, sg := range s.segs {
		sg.writing = 0
	}
	return nil
}

// damaged reports where a segment's valid records end on a bad record.
type damaged struct {
	off int64
	err error
}

func (d *damaged) Error() string { return fmt.Sprintf("damaged record at %d: %v", d.off, d.err) }

// scanSegment calls fn for each valid record of segment seg in f (size
// bytes), in order, up to the end of its records (a zero header) or the
// first damaged one (a *damaged error). Bodies are checked against their
// CRC, read in pieces.
func scanSegment(f io.ReaderAt, size int64, seg uint64, fn func(r record, off int64)) error {
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), int(min(size+16, 1<<20)))
	var h [headLen]byte
	for off := int64(0); off+headLen <= size; {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return err
		}
		r, ml, err := parseHeader(h[:])
		if errors.Is(err, errEnd) {
			return nil
		}
		if err != nil {
			return &damaged{off, err}
		}
		if off+headLen+int64(ml)+r.bodyLen > size {
			return &damaged{off, errors.New("record runs past the segment's end")}
		}
		meta := make([]byte, ml)
		if _, err := io.ReadFull(br, meta); err != nil {
			return err
		}
		if err := parseMeta(seg, h[:], meta, &r); err != nil {
			return &damaged{off, err}
		}
		switch r.typ {
		case recFull:
			hw := crc32.New(castagnoli)
			if _, err := io.CopyN(hw, br, r.bodyLen); err != nil {
				return err
			}
			if hw.Sum32() != r.bodyCRC {
				return &damaged{off, errors.New("body checksum")}
			}
		case recPad:
			if _, err := br.Discard(int(r.bodyLen)); err != nil {
				return err
			}
		}
		fn(r, off)
		off += headLen + int64(ml) + r.bodyLen
	}
	return nil
}

// spill holds the content of an Add, of a size not known before: in
// memory up to spillMem bytes, then in a temporary file.
type spill struct {
	dir string
	buf bytes.Buffer
	f   *os.File
	err error
}

const spillMem = 1 << 20

func (sp *spill) Write(p []byte) (int, error) {
	if sp.err != nil {
		return 0, sp.err
	}
	if sp.f == nil && sp.buf.Len()+len(p) > spillMem {
		f, err := os.CreateTemp(sp.dir, "spill-*"+tmpSuffix)
		if err != nil {
			sp.err = err
			return 0, err
		}
		os.Remove(f.Name())
		sp.f = f
		if _, err := f.Write(sp.buf.Bytes()); err != nil {
			sp.err = err
			return 0, err
		}
		sp.buf = bytes.Buffer{}
	}
	if sp.f != nil {
		n, err := sp.f.Write(p)
		if err != nil {
			sp.err = err
		}
		return n, err
	}
	return sp.buf.Write(p)
}

// writeTo copies what was spilled to w.
func (sp *spill) writeTo(w io.Writer) (int64, error) {
	if sp.f == nil {
		n, err := w.Write(sp.buf.Bytes())
		return int64(n), err
	}
	if _, err := sp.f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	return io.Copy(struct{ io.Writer }{w}, struct{ io.Reader }{sp.f})
}

func (sp *spill) close() {
	if sp.f != nil {
		sp.f.Close()
	}
}
