package queue

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
)

// An op is one atomic step of the spool: files already written (not yet
// synced), then renames and removals that publish them, then directory
// syncs, then removals of what the op made obsolete. The committer runs the
// ops it finds waiting as one batch, sharing one filesystem sync and one
// fsync per directory among them: group commit.
type op struct {
	files   []string    // written by the caller, to be made durable first
	renames [][2]string // then renamed, in order
	removes []string    // then removed (ENOENT ignored)
	dirs    []string    // then these directories are fsynced
	after   []string    // then these are removed (no sync needed)
	// since is the committer's generation when the caller began writing
	// files (committer.begin); see committer.run.
	since uint64
	// renameFirst does the renames before the sync, whose syncfs(2) then
	// makes them durable too, saving the directory syncs (see enqueue).
	renameFirst bool
	done        chan error
}

// committer batches ops; see op.
type committer struct {
	root   string
	noSync bool
	ops    chan *op
	sync   func(root *os.File, files []string) error // syncData; a seam for tests
	syncs  int                                       // batches synced, for tests
	// key, when set (shareSyncs), names the filesystem whose shared
	// rounds (fs, the spool's) commit the renameFirst ops: see
	// commitShared.
	key string
	fs  *fsSyncs
	// events, when set, is told of each batch committed (SpoolConfig.Events).
	events Events

	mu    sync.Mutex
	dirFD map[string]*os.File
	rootF *os.File

	// gen counts the data syncs done; lastFailed is the number of the last
	// one that failed. A filesystem sync reports a writeback error once
	// per handle, not per file: a failing sync may report the error of a
	// file that belongs to a later batch, whose own sync then succeeds. So
	// every op whose writes began before a failed sync fails too (see run).
	gen        atomic.Uint64
	lastFailed atomic.Uint64

	closing sync.RWMutex
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

const maxBatch = 1024

// newCommitter returns a committer of the spool in root; fs holds the
// spool's shared sync rounds (used once shareSyncs is called).
func newCommitter(root string, noSync bool, fs *fsSyncs) (*committer, error) {
	rf, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	c := &committer{root: root, noSync: noSync, fs: fs, ops: make(chan *op, maxBatch), sync: syncData, dirFD: map[string]*os.File{}, rootF: rf, stop: make(chan struct{})}
	c.wg.Add(1)
	go c.loop()
	return c, nil
}

// shareSyncs makes c commit renameFirst ops in the shared sync rounds of
// its filesystem (commitShared), where syncfs(2) allows it.
func (c *committer) shareSyncs() error {
	if !syncCoversRenames {
		return nil
	}
	key, err := c.fs.key(c.rootF)
	c.key = key
	return err
}

var errClosed = errors.New("queue: spool closed")

// errEarlierSync fails an op whose files were being written when a sync of
// the spool failed: the failure may have been theirs.
var errEarlierSync = errors.New("queue: a sync failed while this was being written")

// begin returns the generation to put in op.since; call it before writing
// the op's files.
func (c *committer) begin() uint64 {
	if c.key != "" {
		return c.fs.groups.begin(c.key)
	}
	return c.gen.Load()
}

// commit hands o to the committer and waits until it is durable. ctx bounds
// only the wait for a place in the batch queue: once handed over, the op's
// outcome is always waited for (a batch takes the time of one sync), so the
// caller never mistakes a committed op for a failed one.
func (c *committer) commit(ctx context.Context, o *op) error {
	c.closing.RLock() // close waits for commits under way
	defer c.closing.RUnlock()
	if c.closed {
		return errClosed
	}
	if c.key != "" && o.renameFirst {
		if err := ctx.Err(); err != nil {
			return err
		}
		return c.commitShared(o)
	}
	o.done = make(chan error, 1)
	select {
	case c.ops <- o:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-o.done
}

func (c *committer) close() {
	c.closing.Lock()
	if c.closed {
		c.closing.Unlock()
		return
	}
	c.closed = true
	c.closing.Unlock()
	close(c.stop)
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.dirFD {
		f.Close()
	}
	c.rootF.Close()
}

func (c *committer) loop() {
	defer c.wg.Done()
	batch := make([]*op, 0, maxBatch)
	for {
		select {
		case <-c.stop:
			// Ops already queued are still committed.
			for {
				select {
				case o := <-c.ops:
					c.run([]*op{o})
				default:
					return
				}
			}
		case o := <-c.ops:
			batch = append(batch[:0], o)
		drain:
			for len(batch) < maxBatch {
				select {
				case o := <-c.ops:
					batch = append(batch, o)
				default:
					break drain
				}
			}
			c.run(batch)
		}
	}
}

// run commits one batch: one sync of the written data, the renames, one
// fsync per directory touched, then the late removals; the renames of
// renameFirst ops come before the sync.
func (c *committer) run(batch []*op) {
	errs := make([]error, len(batch))
	for i, o := range batch {
		if o.renameFirst {
			errs[i] = o.rename()
		}
	}
	if !c.noSync {
		var files []string
		for _, o := range batch {
			files = append(files, o.files...)
		}
		if len(files) > 0 {
			c.syncs++
			n := c.gen.Load() + 1
			err := c.sync(c.rootF, files)
			if err != nil {
				c.lastFailed.Store(n)
			}
			c.gen.Store(n)
			for i, o := range batch {
				switch {
				case errs[i] != nil:
				case err != nil:
					errs[i] = err
				case len(o.files) > 0 && c.lastFailed.Load() > o.since:
					errs[i] = errEarlierSync
				}
			}
		}
	}
	dirs := map[string][]int{}
	for i, o := range batch {
		if errs[i] != nil {
			continue
		}
		if !o.renameFirst {
			errs[i] = o.rename()
		}
		if errs[i] == nil {
			for _, p := range o.removes {
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs[i] = err
					break
				}
			}
		}
		for _, d := range o.dirs {
			dirs[d] = append(dirs[d], i)
		}
	}
	if !c.noSync {
		for d, idx := range dirs {
			if err := c.syncDir(d); err != nil {
				for _, i := range idx {
					if errs[i] == nil {
						errs[i] = err
					}
				}
			}
		}
	}
	// Reported before the callers are released, as the shared rounds do
	// (syncGroups.doRound): once a change returns, its round is counted.
	if c.events != nil && !c.noSync {
		c.events.SpoolCommitted(len(batch))
	}
	for i, o := range batch {
		if errs[i] == nil {
			for _, p := range o.after {
				os.Remove(p)
			}
		}
		o.done <- errs[i]
	}
}

// commitShared commits o (renameFirst, without dirs: see enqueue) in the
// caller's goroutine: the renames, then a round of the filesystem's shared
// syncs, which the caller joins, or leads if none is under way: no
// hand-off to the committer's goroutine and back is paid per batch.
func (c *committer) commitShared(o *op) error {
	if err := o.rename(); err != nil {
		return err
	}
	if !c.noSync && len(o.files) > 0 {
		err := c.fs.groups.doCommit(c.key, o.since, func() error {
			c.syncs++ // rounds of a key never overlap
			return c.sync(c.fs.handle(c.key), o.files)
		})
		if err != nil {
			return err
		}
	}
	for _, p := range o.removes {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, p := range o.after {
		os.Remove(p)
	}
	return nil
}

// rename does the renames of o, in order, up to the first failure.
func (o *op) rename() error {
	for _, r := range o.renames {
		if err := rename(r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

func (c *committer) syncDir(d string) error {
	c.mu.Lock()
	f := c.dirFD[d]
	c.mu.Unlock()
	if f == nil {
		var err error
		if f, err = os.Open(d); err != nil {
			return err
		}
		c.mu.Lock()
		if old := c.dirFD[d]; old != nil {
			f.Close()
			f = old
		} else {
			c.dirFD[d] = f
		}
		c.mu.Unlock()
	}
	return syncDir(f)
}

// forgetDir closes the cached handle of a removed directory.
func (c *committer) forgetDir(d string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.dirFD[d]; f != nil {
		f.Close()
		delete(c.dirFD, d)
	}
}
