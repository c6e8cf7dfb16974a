package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// compactEvery is how often compaction looks at the segments besides
// when a change wakes it.
const compactEvery = 5 * time.Second

// compactLoop runs compaction when woken (a segment filled up or lost its
// last live record) and every compactEvery, until the store stops.
func (s *Store) compactLoop() {
	defer s.wg.Done()
	t := time.NewTicker(compactEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-t.C:
			s.flush()
		}
		s.compact()
	}
}

// flush syncs what was written to the active segment and not synced yet
// (removals, attempt records), so that a crash of the machine undoes at
// most compactEvery of them.
func (s *Store) flush() {
	if s.noSync {
		return
	}
	s.mu.Lock()
	sg := s.active
	s.mu.Unlock()
	if sg == nil {
		return
	}
	sg.mu.Lock()
	end := sg.done
	sg.mu.Unlock()
	if err := sg.durable(end, false); err != nil {
		s.fail(err)
	}
}

// compact deletes the segments nothing needs any more, and copies the few
// live records of a sparse sealed segment forward (fresh records, synced)
// so that it can be deleted too.
//
// A segment is deleted when no entry of the index refers to it (envelope
// or body), no loaded message reads it, no record is being written in it,
// and, for each done record it holds, no other segment holds an older
// record of that ID (which the done record keeps dead). Deletions go
// oldest first, each made durable (directory sync) before the next, so a
// crash never keeps a segment whose done records a deleted one needed.
func (s *Store) compact() {
	for {
		sg, copyFrom := s.pick()
		if sg != nil {
			if !s.deleteSegment(sg) {
				return
			}
			continue
		}
		if copyFrom != nil && s.copyForward(copyFrom) {
			continue
		}
		return
	}
}

// pick returns a segment to delete now, or else a sparse one to copy
// forward.
func (s *Store) pick() (del, copyFrom *segment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return nil, nil
	}
	segs := make([]*segment, 0, len(s.segs))
	for _, sg := range s.segs {
		if sg != s.active && sg.sealed && sg.writing == 0 {
			segs = append(segs, sg)
		}
	}
	slices.SortFunc(segs, func(a, b *segment) int {
		if a.minSeq != b.minSeq {
			return cmpU(a.minSeq, b.minSeq)
		}
		return cmpU(a.num, b.num)
	})
	for _, sg := range segs {
		if sg.live == 0 && sg.readers == 0 && s.deletable(sg) {
			return sg, nil
		}
	}
	for _, sg := range segs {
		if sg.live > 0 && !sg.own && sg.liveB*4 < sg.cap {
			return nil, sg
		}
	}
	return nil, nil
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// deletable reports whether the done records of sg are needed by no
// other segment (s.mu held).
func (s *Store) deletable(sg *segment) bool {
	for id, dseq := range sg.dones {
		n := s.recs[id]
		if _, ok := sg.ids[id]; ok {
			n--
		}
		if n == 0 {
			continue // no other segment holds a record of id
		}
		for _, o := range s.segs {
			if o == sg {
				continue
			}
			if seq, ok := o.ids[id]; ok && seq < dseq {
				return false
			}
		}
	}
	return true
}

// deleteSegment removes sg (chosen by pick) from the store and its file
// from the directory, durably. False: it failed (logged).
func (s *Store) deleteSegment(sg *segment) bool {
	s.mu.Lock()
	if sg.live != 0 || sg.readers != 0 || sg.writing != 0 || s.segs[sg.num] != sg {
		s.mu.Unlock()
		return true // changed meanwhile: look again
	}
	delete(s.segs, sg.num)
	sg.gone = true
	for id := range sg.ids {
		if s.recs[id]--; s.recs[id] <= 0 {
			delete(s.recs, id)
		}
	}
	s.mu.Unlock()
	sg.f.Close()
	if !s.keepFree(sg) {
		if err := os.Remove(sg.path); err != nil {
			s.log.Error("journal: deleting a compacted segment", "segment", sg.path, "error", err)
			return false
		}
	}
	if err := s.ds.sync(); err != nil {
		s.log.Error("journal: syncing the directory", "dir", s.dir, "error", err)
		return false
	}
	return true
}

// copyForward writes the live entries of sg again, as full records in the
// active segment, synced; sg is then deleted by the next pick. False: it
// copied nothing (what is left cannot be copied: a corrupt entry), or it
// stopped (closing, or a failure, logged).
func (s *Store) copyForward(sg *segment) bool {
	s.mu.Lock()
	var es []*entry
	for _, e := range s.entries {
		if !e.pending && (e.envSeg == sg || e.bodySeg == sg) {
			es = append(es, e)
		}
	}
	s.mu.Unlock()
	copied := false
	for _, e := range es {
		select {
		case <-s.stop:
			return false
		default:
		}
		ok, err := s.copyEntry(e, sg)
		if err != nil {
			if !errors.Is(err, errClosed) {
				s.log.Error("journal: compaction: copying a message forward", "id", e.id, "segment", sg.path, "error", err)
			}
			return false
		}
		copied = copied || ok
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return copied || sg.live == 0 // (another compaction may have copied them)
}

// copyEntry writes entry e (if it still refers to sg) again, whole; ok
// reports that it did.
func (s *Store) copyEntry(e *entry, sg *segment) (ok bool, err error) {
	if err := s.begin(); err != nil {
		return false, err
	}
	defer s.ops.Done()
	e.mu.Lock()
	defer e.mu.Unlock()
	s.mu.Lock()
	if e.gone || e.pending || e.bad != nil || (e.envSeg != sg && e.bodySeg != sg) {
		s.mu.Unlock()
		return false, nil
	}
	bodySeg, body, q := e.bodySeg, e.body, e.q
	bodySeg.readers++
	s.mu.Unlock()
	defer s.release(bodySeg)
	env, err := s.readEnv(e)
	if err != nil {
		return false, err
	}
	r := &record{typ: recFull, id: e.id, q: q, env: env, bodyLen: body.n}
	src := io.NewSectionReader(bodySeg.f, body.off, body.n)
	err = s.commit(context.Background(), e, r, func(w io.Writer) (int64, error) {
		buf := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(buf)
		return io.CopyBuffer(struct{ io.Writer }{w}, src, *buf)
	}, true)
	return err == nil, err
}

// copyBufs holds the buffers compaction copies bodies through (io.Copy
// would make one per entry copied).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// keepFree keeps the file of the deleted segment sg for reuse (renamed
// out of the segments' names), when it has the size of a segment and
// fewer than maxFree are kept.
func (s *Store) keepFree(sg *segment) bool {
	if sg.own || sg.cap != s.segSize {
		return false
	}
	s.freeMu.Lock()
	defer s.freeMu.Unlock()
	if len(s.free) >= maxFree {
		return false
	}
	p := filepath.Join(s.dir, fmt.Sprintf("%016x%s", sg.num, freeSuffix))
	if err := rename(sg.path, p); err != nil {
		return false
	}
	s.free = append(s.free, p)
	return true
}

// reuse returns a kept file as the next segment, under its new name, the
// directory synced; nil when none is kept. Its old records stay in it
// until written over: their header checksums, seeded with the old
// segment number, end the scan of the new one where its records end.
func (s *Store) reuse() (*segment, error) {
	s.freeMu.Lock()
	n := len(s.free)
	if n == 0 {
		s.freeMu.Unlock()
		return nil, nil
	}
	p := s.free[n-1]
	s.free = s.free[:n-1]
	s.freeMu.Unlock()
	num := s.nextNum.Add(1) - 1
	path := filepath.Join(s.dir, segName(num))
	if err := rename(p, path); err != nil {
		os.Remove(p)
		return nil, nil // a new one, then
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err == nil {
		err = s.ds.sync()
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("journal: reusing %s: %w", p, err)
	}
	return newSegment(num, path, f, s.segSize, s.dsync, s.ds), nil
}
