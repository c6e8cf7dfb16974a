package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// GreylistOptions configure NewGreylist. Every field's zero value is a
// usable default.
type GreylistOptions struct {
	// Dir is the directory the state is kept in (the file greylist.json,
	// created when missing); "" keeps it in memory only, lost at restart.
	// It must be "" when Store is set.
	Dir string
	// Store, when set, keeps the triplets instead of memory and Dir, so
	// that the nodes of a fleet sharing it greylist together: a sender
	// greylisted by one node passes on another after Delay. Its values
	// must live at least the longer of AllowFor and Delay+RetryWindow.
	// MaxEntries does not apply to it. When the store fails (a cluster
	// without quorum), the recipient gets 451 4.3.0 (try again later)
	// and the failure is logged (error). nil: memory and Dir.
	Store StateStore
	// Delay is how long a new triplet is refused before a retry passes;
	// zero means 5 minutes.
	Delay time.Duration
	// RetryWindow is how long after Delay a retry is awaited; a triplet
	// not retried by then starts over. Zero means 24 hours.
	RetryWindow time.Duration
	// AllowFor is how long a triplet that passed stays allowed after it
	// was last seen; zero means 36 days.
	AllowFor time.Duration
	// MaxEntries bounds the triplets kept, in memory and on disk; zero
	// means 100000. When full the triplet seen least recently is
	// forgotten.
	MaxEntries int
	// Internal lists networks whose clients are never greylisted.
	// Authenticated clients never are either.
	Internal []netip.Prefix
	// Skip, when set, exempts a transaction from greylisting when it
	// returns true: for example a sender whose SPF passed, read from the
	// result an SPF rule stored (auth.SPFResultKey), or a client an allow
	// list lists (DNSBLResultKey). It runs at every check.
	Skip func(ctx context.Context, tx *policy.Transaction) bool
	// Now is the clock; nil means time.Now. Tests set a fake one.
	Now func() time.Time
	// Logger receives greylisted triplets (debug) and failures to save the
	// state (error); nil means slog.Default().
	Logger *slog.Logger
}

// greylistEntry is the state of one triplet.
type greylistEntry struct {
	First  time.Time `json:"first"`  // when the current attempt started
	Last   time.Time `json:"last"`   // when the triplet was last seen
	Passed bool      `json:"passed"` // a retry passed: allowed until Last+AllowFor
}

// greylistFile is the format of the state file.
type greylistFile struct {
	Version int             `json:"version"`
	Entries []greylistSaved `json:"entries"` // least recently used first
}

type greylistSaved struct {
	Key string `json:"key"`
	greylistEntry
}

const greylistFileName = "greylist.json"

// Greylist refuses mail from a (client network, sender, recipient)
// triplet it has not seen before with 451 4.7.1, and accepts it when the
// client retries after Delay, as a real mail server does and most spam
// software does not (postgrey's method). A triplet that passed is allowed
// for AllowFor after each time it is seen. The client network is the
// client's /24 for IPv4 and its /64 for IPv6, since a sending cluster
// retries from another address of its network.
//
// The state is saved to Dir (written to a temporary file, synced and
// renamed over the old one, so a crash leaves the old state or the new,
// never a torn file) at most once a minute after it changed, and by Save
// and Close; NewGreylist loads it. A crash loses at most the last
// minute's triplets, whose senders are then greylisted once more. With
// GreylistOptions.Store the state is in the store instead, written at
// each change.
//
// Make one with NewGreylist and register its rule; it is safe for
// concurrent use. Greylisting delays first mail from every new
// correspondent by Delay or more (the sender's retry schedule decides):
// it is off unless a server registers it.
type Greylist struct {
	opts  GreylistOptions
	path  string
	store StateStore
	now   func() time.Time
	log   *slog.Logger

	mu       sync.Mutex
	entries  *lru[string, greylistEntry]
	dirty    bool
	lastSave time.Time
	saving   bool

	saveMu sync.Mutex // one write at a time
	wg     sync.WaitGroup
}

// NewGreylist returns a greylist with the state kept in opts.Dir, loading
// what is there. It fails when the directory cannot be created or the
// state file cannot be read or parsed.
func NewGreylist(opts GreylistOptions) (*Greylist, error) {
	if opts.Delay <= 0 {
		opts.Delay = 5 * time.Minute
	}
	if opts.RetryWindow <= 0 {
		opts.RetryWindow = 24 * time.Hour
	}
	if opts.AllowFor <= 0 {
		opts.AllowFor = 36 * 24 * time.Hour
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100000
	}
	opts.Internal = append([]netip.Prefix(nil), opts.Internal...)
	if opts.Store != nil && opts.Dir != "" {
		return nil, errors.New("relay: greylist: Dir and Store are exclusive")
	}
	g := &Greylist{opts: opts, store: opts.Store, now: opts.Now, log: opts.Logger, entries: newLRU[string, greylistEntry](opts.MaxEntries)}
	if g.now == nil {
		g.now = time.Now
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.lastSave = g.now()
	if opts.Dir == "" {
		return g, nil
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("relay: greylist: %w", err)
	}
	g.path = filepath.Join(opts.Dir, greylistFileName)
	b, err := os.ReadFile(g.path)
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relay: greylist: %w", err)
	}
	var f greylistFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("relay: greylist: %s: %w", g.path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("relay: greylist: %s: unknown version %d", g.path, f.Version)
	}
	now := g.now()
	for _, e := range f.Entries {
		if !g.expired(e.greylistEntry, now) {
			g.entries.add(e.Key, e.greylistEntry)
		}
	}
	return g, nil
}

// expired reports whether e no longer matters at now.
func (g *Greylist) expired(e greylistEntry, now time.Time) bool {
	if e.Passed {
		return now.Sub(e.Last) > g.opts.AllowFor
	}
	return now.Sub(e.First) > g.opts.Delay+g.opts.RetryWindow
}

// greylistKey is the triplet of a recipient of tx.
func greylistKey(tx *policy.Transaction, rcpt policy.Recipient) string {
	ip := tx.Conn.Remote.Addr().Unmap().WithZone("")
	bits := 24
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	from := "<>"
	if !tx.From.IsNull() {
		from = strings.ToLower(tx.From.String())
	}
	return p.String() + " " + from + " " + strings.ToLower(rcpt.Addr.String())
}

// next is the state of a triplet seen at now, given its state e (ok
// false when unknown), and how long the client must still wait; zero
// means it passes.
func (g *Greylist) next(e greylistEntry, ok bool, now time.Time) (greylistEntry, time.Duration) {
	if ok && e.First.After(now) {
		// First seen by a node whose clock is ahead (a shared store), or
		// a bad value: it was seen now at the latest.
		e.First = now
	}
	switch {
	case ok && g.expired(e, now):
		ok = false
	case ok && e.Passed:
		e.Last = now
		return e, 0
	case ok && now.Sub(e.First) >= g.opts.Delay:
		return greylistEntry{First: e.First, Last: now, Passed: true}, 0
	}
	if !ok {
		e = greylistEntry{First: now}
	}
	e.Last = now
	return e, g.opts.Delay - now.Sub(e.First)
}

// check records one sighting of the triplet key and returns how long the
// client must still wait; zero means it passes.
func (g *Greylist) check(ctx context.Context, key string) (time.Duration, error) {
	now := g.now()
	if g.store != nil {
		return g.checkStore(ctx, key, now)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.entries.get(key)
	e, wait := g.next(e, ok, now)
	g.entries.add(key, e)
	g.changed(now)
	return wait, nil
}

// lastSeenSlack is how stale the Last of a triplet that passed may be
// left in a StateStore: within it, a sighting writes nothing. It shortens
// AllowFor by at most this much, and saves a write per recipient of a
// known correspondent.
const lastSeenSlack = time.Hour

// checkStore is check with the state in g.store.
func (g *Greylist) checkStore(ctx context.Context, key string, now time.Time) (time.Duration, error) {
	var wait time.Duration
	_, err := g.store.Update(ctx, "greylist:"+key, func(old []byte) ([]byte, error) {
		var e greylistEntry
		if old != nil {
			if err := json.Unmarshal(old, &e); err != nil {
				return nil, err
			}
		}
		n, w := g.next(e, old != nil, now)
		wait = w
		if old != nil && e.Passed && n.Passed && n.First.Equal(e.First) && n.Last.Sub(e.Last) < lastSeenSlack {
			return old, nil
		}
		return json.Marshal(n)
	})
	return wait, err
}

// changed marks the state dirty and starts a save in the background when
// the last one is a minute old. g.mu held.
func (g *Greylist) changed(now time.Time) {
	g.dirty = true
	if g.path == "" || g.saving || now.Sub(g.lastSave) < time.Minute {
		return
	}
	g.saving = true
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.Save(); err != nil {
			g.log.Error("greylist state not saved", slog.String("error", err.Error()))
		}
		g.mu.Lock()
		g.saving = false
		g.mu.Unlock()
	}()
}

// Save writes the state to the directory now, if it changed since the
// last save. Without a directory it does nothing.
func (g *Greylist) Save() error {
	if g.path == "" {
		return nil
	}
	g.saveMu.Lock()
	defer g.saveMu.Unlock()
	g.mu.Lock()
	if !g.dirty {
		g.mu.Unlock()
		return nil
	}
	f := greylistFile{Version: 1, Entries: make([]greylistSaved, 0, g.entries.len())}
	g.entries.each(func(k string, e greylistEntry) {
		f.Entries = append(f.Entries, greylistSaved{Key: k, greylistEntry: e})
	})
	g.dirty, g.lastSave = false, g.now()
	g.mu.Unlock()
	// Least recently used first, so that loading adds them in use order.
	for i, j := 0, len(f.Entries)-1; i < j; i, j = i+1, j-1 {
		f.Entries[i], f.Entries[j] = f.Entries[j], f.Entries[i]
	}
	b, err := json.Marshal(f)
	if err == nil {
		err = writeFileAtomic(g.path, b)
	}
	if err != nil {
		g.mu.Lock()
		g.dirty = true
		g.mu.Unlock()
		return fmt.Errorf("relay: greylist: %w", err)
	}
	return nil
}

// Close waits for a save in progress and saves what changed since.
func (g *Greylist) Close() error {
	g.wg.Wait()
	return g.Save()
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory, synced, renamed over path, and the directory synced.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename durable. Directories cannot be synced on Windows,
	// where the error is ignored.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// exempt reports whether tx is never greylisted.
func (g *Greylist) exempt(ctx context.Context, tx *policy.Transaction) bool {
	c := tx.Conn
	if c == nil || !c.Remote.Addr().IsValid() || c.Authenticated() || InNetworks(c.Remote.Addr(), g.opts.Internal) {
		return true
	}
	return g.opts.Skip != nil && g.opts.Skip(ctx, tx)
}

func (g *Greylist) refuse(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, wait time.Duration) policy.Verdict {
	secs := int((wait + time.Second - 1) / time.Second)
	g.log.LogAttrs(ctx, slog.LevelDebug, "greylisted", slog.String("client_ip", tx.Conn.Remote.Addr().String()),
		slog.String("from", tx.From.String()), slog.String("to", rcpt.Addr.String()), slog.Int("wait_s", secs))
	return policy.Defer("4.7.1", fmt.Sprintf("%s: Recipient address rejected: Greylisted, try again in %d seconds", rcpt.Addr.Path(), secs))
}

// failed is the verdict when the shared state failed: try again later,
// as for a new triplet.
func (g *Greylist) failed(ctx context.Context, err error) policy.Verdict {
	g.log.LogAttrs(ctx, slog.LevelError, "greylisting state failed", slog.String("error", err.Error()))
	return policy.Defer("4.3.0", "Greylisting state unavailable, try again later")
}

// RcptRule returns the greylisting rule for the rcpt stage, where
// Postfix's policy services (postgrey) run: a triplet not seen before, or
// retried before Delay, gets "451 4.7.1 <rcpt>: Recipient address
// rejected: Greylisted, try again in N seconds"; a retry after Delay, and
// any later mail of the triplet, gets Next. It never accepts: register it
// before the relay rules, after the rules that refuse outright (unknown
// recipients, block lists), so that only mail that would be accepted is
// greylisted and a refused recipient leaves no state.
func (g *Greylist) RcptRule() policy.RcptRule {
	return func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		if g.exempt(ctx, tx) {
			return policy.Next()
		}
		wait, err := g.check(ctx, greylistKey(tx, rcpt))
		if err != nil {
			return g.failed(ctx, err)
		}
		if wait > 0 {
			return g.refuse(ctx, tx, rcpt, wait)
		}
		return policy.Next()
	}
}

// MessageRule returns the greylisting rule for the preq stage: the
// transaction's triplets are checked together after DATA, and the message
// is refused with 451 4.7.1 until each has passed. Greylisting at preq
// costs the bandwidth of the message at each try, but lets Skip read what
// the preq rules found (a DKIM signature that verified, when DKIM is
// verified at preq).
func (g *Greylist) MessageRule() policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, _ *policy.Message) policy.Verdict {
		if g.exempt(ctx, tx) {
			return policy.Next()
		}
		var wait time.Duration
		var first policy.Recipient
		for _, r := range tx.Rcpts {
			w, err := g.check(ctx, greylistKey(tx, r))
			if err != nil {
				return g.failed(ctx, err)
			}
			if w > wait {
				wait, first = w, r
			}
		}
		if wait > 0 {
			return g.refuse(ctx, tx, first, wait)
		}
		return policy.Next()
	}
}
