package journal

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

const (
	segSuffix  = ".seg"
	tmpSuffix  = ".tmp"
	freeSuffix = ".free" // a compacted segment's file, kept for reuse
	// maxFree bounds the files kept for reuse.
	maxFree = 2
)

// segName returns the file name of segment n.
func segName(n uint64) string { return fmt.Sprintf("%016x%s", n, segSuffix) }

// parseSegName returns the number of a segment file name.
func parseSegName(name string) (uint64, bool) {
	hex, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(hex) != 16 {
		return 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 64)
	return n, err == nil
}

// segment is one segment file. Writers reserve ranges of it (Store.mu),
// write them concurrently with WriteAt, then mark them written (complete);
// durable waits until a data sync covers a range: the first waiter that
// finds none under way runs one (fdatasync) for everything written
// contiguously so far, and the others wait for it or lead the next
// (group commit). A range is only ever reported durable when every range
// before it in the segment is written and synced too, so a record that
// was acknowledged never follows a hole.
type segment struct {
	num  uint64
	path string
	f    *os.File
	cap  int64 // the file's size (zero-filled)
	// own: a dedicated segment (a record larger than half a segment),
	// written and synced by its one writer.
	own bool

	// Guarded by Store.mu:
	next    int64 // where the next reservation goes (the active segment)
	sealed  bool  // no more reservations
	writing int   // records reserved and not yet in the index
	live    int   // references of the index (envelopes and bodies) into it
	liveB   int64 // bytes of those references
	readers int   // loaded messages and reads under way
	minSeq  uint64
	maxSeq  uint64
	// ids holds the highest sequence of a full or state record of each ID
	// in the segment, dones that of each done record: a segment holding
	// the done record of an ID may be deleted only when no other segment
	// holds an older record of that ID (see Store.deletable).
	ids   map[string]uint64
	dones map[string]uint64
	gone  bool // deleted (or being deleted)

	mu      sync.Mutex
	cond    *sync.Cond
	done    int64           // every byte below is written
	pending map[int64]int64 // written ranges past done: start -> end
	synced  int64           // every byte below is durable
	// doneN counts the records below done, syncedN those below synced
	// (for Events.SpoolCommitted).
	doneN, syncedN int
	// committed, when set, is told of each sync round and the records
	// it made durable (Config.Events).
	committed func(ops int)
	syncing   bool
	needDir   bool // the directory entry must be synced before the first ack
	err       error
	sync      func(*os.File) error // fdatasync; a seam for tests
	dir       *dirSyncer
}

func newSegment(num uint64, path string, f *os.File, size int64, dsync func(*os.File) error, dir *dirSyncer) *segment {
	sg := &segment{num: num, path: path, f: f, cap: size, pending: map[int64]int64{}, ids: map[string]uint64{}, dones: map[string]uint64{}, sync: dsync, dir: dir}
	sg.cond = sync.NewCond(&sg.mu)
	return sg
}

// complete marks [start, end) written.
func (sg *segment) complete(start, end int64) {
	sg.mu.Lock()
	if start == sg.done {
		sg.done = end
		sg.doneN++
		for {
			e, ok := sg.pending[sg.done]
			if !ok {
				break
			}
			delete(sg.pending, sg.done)
			sg.done = e
			sg.doneN++
		}
		sg.cond.Broadcast()
	} else {
		sg.pending[start] = end
	}
	sg.mu.Unlock()
}

// durable waits until [0, end) is written and synced. noSync: only
// written.
func (sg *segment) durable(end int64, noSync bool) error {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	for {
		switch {
		case sg.err != nil:
			return sg.err
		case sg.synced >= end:
			return nil
		case noSync && sg.done >= end:
			return nil
		case !sg.syncing && sg.done >= end:
			// Lead a sync of everything written so far.
			sg.syncing = true
			w, n, dir := sg.done, sg.doneN, sg.needDir
			sg.mu.Unlock()
			err := sg.sync(sg.f)
			if err == nil && dir {
				err = sg.dir.sync()
			}
			sg.mu.Lock()
			sg.syncing = false
			if err != nil {
				sg.err = fmt.Errorf("journal: syncing %s: %w", sg.path, err)
			} else {
				if sg.committed != nil && n > sg.syncedN {
					sg.committed(n - sg.syncedN)
				}
				sg.synced, sg.needDir = max(sg.synced, w), sg.needDir && !dir
				sg.syncedN = max(sg.syncedN, n)
			}
			sg.cond.Broadcast()
		default:
			sg.cond.Wait()
		}
	}
}

// fail makes every later durable call on sg fail with err.
func (sg *segment) fail(err error) {
	sg.mu.Lock()
	if sg.err == nil {
		sg.err = err
	}
	sg.cond.Broadcast()
	sg.mu.Unlock()
}

// recWriter writes a record at off in f: it gathers the room of the
// header, the meta and the body in buf and writes them with one pwrite
// when they fit (most messages), the header filled in at the end (done).
// A larger record is written in buf-sized pieces, its header's room as
// zeros, and the header last, on its own. Either way the record checks
// only once whole (its checksums), and nobody is told it is there before
// its sync, which waits for every record before it.
type recWriter struct {
	f        *os.File
	off, end int64  // file offset of buf[0]; writing past end fails
	buf      []byte // cap recBufSize
	flushed  bool   // a piece is in the file: the header goes last
}

const recBufSize = 64 << 10

var errOverrun = errors.New("journal: message longer than its reservation")

// recWriters holds recWriters and their buffers.
var recWriters = sync.Pool{New: func() any { return &recWriter{buf: make([]byte, 0, recBufSize)} }}

// begin starts the record of total bytes at off in f.
func (w *recWriter) begin(f *os.File, off, total int64) {
	w.f, w.off, w.end, w.flushed = f, off, off+total, false
	w.buf = w.buf[:headLen]
	clear(w.buf)
}

func (w *recWriter) Write(p []byte) (int, error) {
	if w.off+int64(len(w.buf)+len(p)) > w.end {
		return 0, errOverrun
	}
	n := 0
	for len(p) > 0 {
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

func (w *recWriter) flush() error {
	_, err := w.f.WriteAt(w.buf, w.off)
	w.off += int64(len(w.buf))
	w.buf = w.buf[:0]
	w.flushed = true
	return err
}

// done writes what is left with header h: in the one write of a record
// that fit in buf, or after the rest.
func (w *recWriter) done(h []byte, start int64) error {
	if w.off+int64(len(w.buf)) != w.end {
		return errOverrun
	}
	if !w.flushed {
		copy(w.buf, h)
		_, err := w.f.WriteAt(w.buf, w.off)
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	_, err := w.f.WriteAt(h, start)
	return err
}

// release puts w back in the pool.
func (w *recWriter) release() {
	w.f = nil
	recWriters.Put(w)
}

// crcWriter computes the CRC-32C of what goes through it.
type crcWriter struct {
	w   io.Writer
	crc uint32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	c.n += int64(n)
	return n, err
}

// zeroFill writes size zero bytes to f from offset 0.
func zeroFill(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// createSegment makes segment file num in dir, size bytes of zeros
// (written, not sparse, so that a data sync later writes no metadata),
// synced, under its final name, the directory synced: a segment ready for
// records.
func createSegment(dir string, num uint64, size int64, fill bool, dsync func(*os.File) error, ds *dirSyncer) (*segment, error) {
	path := filepath.Join(dir, segName(num))
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("journal: preparing segment %s: %w", path, err)
	}
	if fill {
		if err := zeroFill(f, size); err != nil {
			return fail(err)
		}
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	} else if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	if err := rename(tmp, path); err != nil {
		return fail(err)
	}
	if fill {
		if err := ds.sync(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return newSegment(num, path, f, size, dsync, ds), nil
}

// dirSyncer syncs the journal's directory.
type dirSyncer struct {
	mu     sync.Mutex
	path   string
	noSync bool
}

func (d *dirSyncer) sync() error {
	if d.noSync {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := os.Open(d.path)
	if err != nil {
		return err
	}
	defer f.Close()
	return syncDir(f)
}
