package queue

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// Entry files are recycled: a delivered message's file is renamed into
// free/ instead of being unlinked, and the next entry is written over it.
// Creating a file costs an inode allocation, and on ext4 that allocation
// scans past every inode freed in the last minute or more of its block
// group (recently_deleted(), done on every filesystem mounted without a
// journal): with an MTA's churn of one create and one unlink per message,
// measured here at 20 µs per create on a quiet directory and 300-400 µs of
// kernel CPU under load. A rename costs about 20 µs and leaves no freed
// inode behind, which keeps the maildir's creates cheap too.
//
// Rewriting a file that someone may still read would show them another
// message, so a file is reused only once every handle the spool opened
// on it is closed: readers are counted per ID, and a removed entry still
// being read waits in free/ until its last reader is done.
//
// Crash safety: the new content, its size, the rename that publishes it
// and the earlier renames that took the file out of its old queue are all
// made durable by one syncfs(2) of the filesystem before the 250. A power
// loss during that sync may leave a name (the old one, or the new one)
// pointing at content that is not the entry's: its envelope then names
// another ID, or none, and the entry is set aside as corrupt, never
// delivered as another message; its message was either delivered already
// or not acknowledged yet. Outside Linux (one fsync per file, which does
// not cover other directories) files are not recycled.
const recycleEntries = runtime.GOOS == "linux"

// The pool is sized for a backlog: when a burst drains, every entry it
// leaves goes to free/ rather than being unlinked, as long as these hold.
const (
	// maxFree bounds the files kept in free/.
	maxFree = 4096
	// maxFreeBytes bounds their total size.
	maxFreeBytes = 64 << 20
	// maxRecycledSize is the largest entry file kept for reuse.
	maxRecycledSize = 256 << 10
	freeDir         = "free"
)

// freeFile is a file of free/.
type freeFile struct {
	path string
	size int64
}

// recycler keeps free/ and counts the readers of each entry.
type recycler struct {
	dir string // <spool>/free
	on  bool
	// maxFiles and maxBytes bound free/ (maxFree, maxFreeBytes; tests
	// lower them).
	maxFiles int
	maxBytes int64

	mu      sync.Mutex
	readers map[string]int      // entry ID -> handles open on its file
	waiting map[string]freeFile // removed entry ID -> its file in free/, still read
	free    []freeFile          // files of free/ ready for reuse
	bytes   int64               // size of the files of free and waiting
}

// newRecycler opens free/ under root, taking in the files it holds
// (readers of a former process are gone).
func newRecycler(root string, on bool) (*recycler, error) {
	r := &recycler{dir: filepath.Join(root, freeDir), on: on, maxFiles: maxFree, maxBytes: maxFreeBytes,
		readers: map[string]int{}, waiting: map[string]freeFile{}}
	if err := os.MkdirAll(r.dir, 0o750); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		p := filepath.Join(r.dir, e.Name())
		var size int64 = -1
		if fi, err := e.Info(); err == nil && e.Type().IsRegular() && strings.HasSuffix(e.Name(), entrySuffix) {
			size = fi.Size()
		}
		if size < 0 || !r.room(size) {
			os.Remove(p)
			continue
		}
		r.free = append(r.free, freeFile{p, size})
		r.bytes += size
	}
	return r, nil
}

// acquire counts a reader of entry id; call it before opening the file,
// and release when the handle is closed (or the open failed).
func (r *recycler) acquire(id string) {
	r.mu.Lock()
	r.readers[id]++
	r.mu.Unlock()
}

func (r *recycler) release(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.readers[id]--; r.readers[id] > 0 {
		return
	}
	delete(r.readers, id)
	if f, ok := r.waiting[id]; ok {
		delete(r.waiting, id)
		r.free = append(r.free, f)
	}
}

// room reports whether free/ may take a file of size bytes; r.mu is held.
func (r *recycler) room(size int64) bool {
	return r.on && size <= maxRecycledSize && len(r.free)+len(r.waiting) < r.maxFiles && r.bytes+size <= r.maxBytes
}

// discard takes the entry file at path (of entry id, size bytes) out of
// its queue: renamed into free/ for reuse, or unlinked when recycling is
// off, the pool is full or the file is large. Neither is synced.
func (r *recycler) discard(path, id string, size int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.room(size) {
		return os.Remove(path)
	}
	f := freeFile{filepath.Join(r.dir, id+entrySuffix), size}
	if _, taken := r.waiting[id]; taken {
		return os.Remove(path) // the same ID removed twice while read: rare
	}
	if err := rename(path, f.path); err != nil {
		// free/ unusable (removed, full, a file in its place): the entry
		// must still go, or its message would be delivered again.
		return os.Remove(path)
	}
	r.bytes += size
	if r.readers[id] > 0 {
		r.waiting[id] = f
	} else {
		r.free = append(r.free, f)
	}
	return nil
}

// create opens a file to write a new entry in: a free file, written over
// where it is (recycled reports it: its old content must be cut off after
// the new one is written; the commit renames it into its queue, a crash
// before leaves it in free/), else a new file at path.
func (r *recycler) create(path string) (f *os.File, recycled bool, err error) {
	for {
		r.mu.Lock()
		n := len(r.free)
		if n == 0 {
			r.mu.Unlock()
			break
		}
		ff := r.free[n-1]
		r.free = r.free[:n-1]
		r.bytes -= ff.size
		r.mu.Unlock()
		if f, err := openFile(ff.path, os.O_RDWR, 0); err == nil {
			return f, true, nil
		}
		os.Remove(ff.path)
	}
	f, err = openFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	return f, false, err
}

// size returns the number of files in free/ ready for reuse (tests).
func (r *recycler) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.free)
}
