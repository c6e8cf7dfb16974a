package queue

import (
	"os"

	"github.com/mtakit/mtakit/policy"
)

// maxHot bounds the entries kept open between Enqueue and the scheduler's
// Load (a file handle each).
const maxHot = 64

// A hotEntry is an entry just enqueued into Working, still open, with its
// envelope: the scheduler's Load, which follows at once, takes it instead
// of finding, opening and decoding the entry again.
type hotEntry struct {
	env *Envelope
	f   *os.File
}

// keepHot keeps the entry of env, just committed into Working, open in f
// for the next Load (it closes f when maxHot entries are kept already, or
// the spool is closed). The entry counts as read (recycler) while kept.
func (s *Spool) keepHot(env *Envelope, f *os.File) {
	s.hotMu.Lock()
	if len(s.hot) >= maxHot || s.hot == nil {
		s.hotMu.Unlock()
		f.Close()
		return
	}
	s.rec.acquire(env.ID)
	s.hot[env.ID] = hotEntry{env: env, f: f}
	s.hotMu.Unlock()
}

// takeHot removes and returns the kept entry of id.
func (s *Spool) takeHot(id string) (hotEntry, bool) {
	s.hotMu.Lock()
	defer s.hotMu.Unlock()
	h, ok := s.hot[id]
	if ok {
		delete(s.hot, id)
	}
	return h, ok
}

// dropHot forgets the kept entry of id, if any: every change of an entry
// calls it first, so that Load never returns an envelope older than the
// entry's (or one of an entry moved or removed meanwhile).
func (s *Spool) dropHot(id string) {
	if h, ok := s.takeHot(id); ok {
		s.closeEntry(h.f, id)
	}
}

// closeHot closes every kept entry (Close).
func (s *Spool) closeHot() {
	s.hotMu.Lock()
	hot := s.hot
	s.hot = nil // closed: keepHot keeps nothing more
	s.hotMu.Unlock()
	for id, h := range hot {
		s.closeEntry(h.f, id)
	}
}

// loadHot returns the message of a kept entry, as loadEntry does.
func (s *Spool) loadHot(id string, h hotEntry) (*Envelope, *policy.Message, error) {
	m, err := s.message(h.f, id, h.env)
	if err != nil {
		return nil, nil, err
	}
	return h.env, m, nil
}
