package auth

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mtakit/mtakit/policy"
)

// ErrInvalidCredentials is returned for an unknown user or a wrong
// password; the two are not told apart, not even by timing. Its Temporary
// method returns false, which is how the smtp package (which does not
// import this one) tells a refusal of the credentials from a failure.
var ErrInvalidCredentials error = invalidCredentials{}

type invalidCredentials struct{}

func (invalidCredentials) Error() string   { return "auth: invalid credentials" }
func (invalidCredentials) Temporary() bool { return false }

// ErrTooManyFailures is wrapped by *RateLimitError.
var ErrTooManyFailures = errors.New("auth: too many failed authentication attempts")

// RateLimitError is returned while a client address is refused after too
// many failed attempts. It is temporary: the client may try again after
// RetryAfter.
type RateLimitError struct {
	Remote     netip.Addr    // the client address (an IPv6 address is limited by its /64)
	RetryAfter time.Duration // time left in the cool-down
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("auth: too many failed authentication attempts from %s, retry in %s", e.Remote, e.RetryAfter.Round(time.Second))
}

// Temporary reports true: the refusal ends with the cool-down.
func (e *RateLimitError) Temporary() bool { return true }

// Unwrap returns ErrTooManyFailures.
func (e *RateLimitError) Unwrap() error { return ErrTooManyFailures }

// HashPassword returns the bcrypt hash of pw at bcrypt's default cost, in
// the form a credential file line expects after the colon.
func HashPassword(pw string) (string, error) {
	if pw == "" {
		return "", errors.New("auth: empty password")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("auth: %w", err)
	}
	return string(h), nil
}

// CredentialError reports a bad line of a credential file.
type CredentialError struct {
	Path string // "" when parsing a reader
	Line int    // 1-based
	Msg  string
}

func (e *CredentialError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("auth: credentials line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("auth: %s:%d: %s", e.Path, e.Line, e.Msg)
}

// maxCredentialLine bounds one line of a credential file.
const maxCredentialLine = 4096

// ParseCredentials reads credential lines from r: "address:bcrypt-hash",
// one per line. Blank lines and lines starting with "#" are ignored;
// white space around the address and the hash is trimmed. The address is
// normalized with policy.ParseAddress (the domain lower-cased, in A-label
// form) and is the key of the returned map; the local part keeps its case.
// The split is at the last colon, so a quoted local part may contain one.
//
// Every bad line is reported, as a *CredentialError with its line number,
// joined with errors.Join; the map then holds the good lines.
func ParseCredentials(r io.Reader) (map[string][]byte, error) {
	users := make(map[string][]byte)
	firstLine := make(map[string]int)
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxCredentialLine)
	n := 0
	bad := func(msg string, args ...any) {
		errs = append(errs, &CredentialError{Line: n, Msg: fmt.Sprintf(msg, args...)})
	}
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ':')
		if i < 0 {
			bad("want address:bcrypt-hash")
			continue
		}
		addr, hash := strings.TrimSpace(line[:i]), strings.TrimSpace(line[i+1:])
		key, err := identityKey(addr)
		if err != nil {
			bad("bad address %q: %v", addr, err)
			continue
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || !strings.HasPrefix(hash, "$2") {
			bad("bad bcrypt hash for %s", key)
			continue
		}
		if prev, dup := firstLine[key]; dup {
			bad("duplicate address %s (first on line %d)", key, prev)
			continue
		}
		firstLine[key] = n
		users[key] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			n++
			bad("line longer than %d bytes", maxCredentialLine)
		} else {
			errs = append(errs, fmt.Errorf("auth: reading credentials: %w", err))
		}
	}
	return users, errors.Join(errs...)
}

// identityKey normalizes a login name: an address whose domain compares
// case-insensitively (and IDNA-normalized), local part exact.
func identityKey(s string) (string, error) {
	if strings.ContainsAny(s, "<>") {
		return "", errors.New("angle brackets not allowed")
	}
	a, err := policy.ParseAddress(s)
	if err != nil {
		return "", err
	}
	if a.IsNull() {
		return "", errors.New("empty address")
	}
	if a.Domain == "" {
		return "", errors.New("no domain")
	}
	return a.String(), nil
}

// CredentialOptions configure LoadCredentialFile. Every field's zero value
// is a usable default; LoadCredentialFile copies them.
type CredentialOptions struct {
	// Limiter counts failed attempts per client address; nil means
	// NewFailureLimiter(). Limiting is always on: it is what makes
	// guessing passwords slow.
	Limiter *FailureLimiter
	// Logger receives reloads (info), a world-readable file and refused
	// attempts (warn), failed reloads (error); nil means slog.Default().
	// Passwords are never logged.
	Logger *slog.Logger
}

// CredentialFile is an smtp.Authenticator backed by a file of
// "address:bcrypt-hash" lines (see ParseCredentials). It is safe for
// concurrent use; Reload and Watch swap in a new set of users atomically.
//
// An unknown user costs the same bcrypt comparison as a known one (against
// a dummy hash of the same cost), so response times do not reveal which
// addresses exist. Failed attempts are counted per client address by a
// FailureLimiter (on by default).
type CredentialFile struct {
	path    string
	limiter *FailureLimiter
	log     *slog.Logger

	reloadMu sync.Mutex // serializes Reload
	mu       sync.RWMutex
	users    map[string][]byte
	dummy    []byte
	stamp    fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// LoadCredentialFile reads the credential file at path. Any bad line makes
// it fail, with every bad line reported (see ParseCredentials).
func LoadCredentialFile(path string, opts CredentialOptions) (*CredentialFile, error) {
	f := &CredentialFile{path: path, limiter: opts.Limiter, log: opts.Logger}
	if f.limiter == nil {
		f.limiter = NewFailureLimiter()
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path returns the file's path.
func (f *CredentialFile) Path() string { return f.path }

// Len returns the number of users loaded.
func (f *CredentialFile) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.users)
}

// Reload reads the file again. On any error (unreadable file, a bad line)
// the users loaded before stay in force and the error is returned.
func (f *CredentialFile) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	fh, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	users, err := ParseCredentials(fh)
	if err != nil {
		return withPath(err, f.path)
	}
	if st.Mode().Perm()&0o004 != 0 {
		f.log.Warn("credential file is world-readable", slog.String("path", f.path))
	}
	// The dummy hash has the cost of the real ones, so an unknown user
	// takes as long as a known one.
	cost := bcrypt.DefaultCost
	for _, h := range users {
		if c, err := bcrypt.Cost(h); err == nil {
			cost = c
			break
		}
	}
	f.mu.RLock()
	dummy := f.dummy
	f.mu.RUnlock()
	if c, err := bcrypt.Cost(dummy); err != nil || c != cost {
		dummy, err = bcrypt.GenerateFromPassword([]byte("mtakit-dummy-password"), cost)
		if err != nil {
			return fmt.Errorf("auth: dummy hash: %w", err)
		}
	}
	f.mu.Lock()
	f.users, f.dummy = users, dummy
	f.stamp = fileStamp{mod: st.ModTime(), size: st.Size()}
	f.mu.Unlock()
	f.log.Info("credentials loaded", slog.String("path", f.path), slog.Int("users", len(users)))
	return nil
}

func withPath(err error, path string) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	for _, e := range list {
		var ce *CredentialError
		if errors.As(e, &ce) {
			ce.Path = path
		}
	}
	return err
}

// Watch checks the file every interval until ctx is done, then returns
// nil. When its modification time or size changes and then stays the same
// for one more interval (a file being written in place is not read
// half-written), it is reloaded. A failed reload is logged and the
// previous users stay in force.
func (f *CredentialFile) Watch(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("auth: Watch interval must be positive")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var pending *fileStamp // a change seen at the last tick, not loaded yet
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := os.Stat(f.path)
		if err != nil {
			f.log.Error("credential file", slog.String("path", f.path), slog.String("error", err.Error()))
			continue
		}
		now := fileStamp{mod: st.ModTime(), size: st.Size()}
		f.mu.RLock()
		same := f.stamp == now
		f.mu.RUnlock()
		if same {
			pending = nil
			continue
		}
		// Read a changed file once it has stayed the same for a whole
		// interval: one being written in place (truncated, then filled)
		// must not load as fewer users.
		if pending == nil || *pending != now {
			pending = &now
			continue
		}
		pending = nil
		if err := f.Reload(); err != nil {
			f.log.Error("credential reload failed, keeping previous users", slog.String("path", f.path), slog.String("error", err.Error()))
			// Do not retry the same broken version every tick.
			f.mu.Lock()
			f.stamp = fileStamp{mod: st.ModTime(), size: st.Size()}
			f.mu.Unlock()
		}
	}
}

// Authenticate checks a user's password, as smtp.Authenticator asks: nil
// for good credentials, ErrInvalidCredentials (535 5.7.8) for an unknown
// user or a wrong password, a *RateLimitError (454 4.7.0) while the
// client's address is refused after too many failures. username is an address; its
// domain is compared case-insensitively, its local part exactly.
func (f *CredentialFile) Authenticate(ctx context.Context, remote netip.Addr, username, password string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.limiter != nil {
		if err := f.limiter.Wait(ctx, remote); err != nil {
			var rl *RateLimitError
			if errors.As(err, &rl) {
				f.log.Warn("authentication refused: too many failures", slog.String("remote", remote.String()), slog.Duration("retry_after", rl.RetryAfter))
			}
			return err
		}
	}
	f.mu.RLock()
	hash, known := f.users[normalizeLogin(username)]
	dummy := f.dummy
	f.mu.RUnlock()
	if !known {
		hash = dummy
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	if err == nil && known && password != "" {
		return nil
	}
	if f.limiter != nil {
		if err := f.limiter.Fail(ctx, remote); err != nil {
			f.log.Error("authentication failure not counted", slog.String("remote", remote.String()), slog.String("error", err.Error()))
		}
	}
	return ErrInvalidCredentials
}

func normalizeLogin(username string) string {
	k, err := identityKey(strings.TrimSpace(username))
	if err != nil {
		return ""
	}
	return k
}

// FailureLimiter counts failed authentications per client address (an
// IPv6 address by its /64) and slows, then refuses, addresses that fail too
// often:
//
//   - Failures older than Window are forgotten.
//   - Once an address has MaxFailures failures in the window, each further
//     attempt waits Delay before it is checked (Wait honours ctx).
//   - Once it has RefuseAfter failures, every attempt is refused at once,
//     unchecked, with a *RateLimitError (temporary) until Cooldown has
//     passed since the last failure; the count then starts again from zero.
//
// A success does not reset the count, so one known password cannot be used
// to keep guessing others. Set the fields before first use.
//
// The counts are kept in memory, per process, unless Store is set: the
// nodes of a fleet sharing a store count a guesser's failures on all of
// them together.
type FailureLimiter struct {
	MaxFailures int           // failures before attempts are slowed; default 5
	RefuseAfter int           // failures before attempts are refused; default 2*MaxFailures
	Window      time.Duration // default 15 minutes
	Delay       time.Duration // default 2 seconds; negative: no slowing down
	Cooldown    time.Duration // default 15 minutes
	MaxTracked  int           // addresses tracked at most; default 100000 (memory only)

	// Store, when set, keeps the failures instead of memory. Its values
	// must live at least the longer of Window and Cooldown. When it fails
	// (a cluster without quorum), Wait returns its error, which
	// CredentialFile passes on: the client gets 454 4.7.0 (try again
	// later), never an unlimited guess.
	Store FailureStore

	now func() time.Time // for tests

	mu      sync.Mutex
	clients map[netip.Addr]*failures
}

type failures struct {
	times        []time.Time // recent failures, oldest first
	blockedUntil time.Time
}

// FailureStore keeps the failures of a FailureLimiter where several nodes
// share them: a map from keys to values that change only by
// compare-and-set. The JetStream key-value store of
// github.com/mtakit/mtakit/queue/jetstream/kv satisfies it.
type FailureStore interface {
	// Update replaces the value of key with what fn returns given the
	// current one (nil when there is none), atomically: when another
	// writer changed the value between the read and the write, fn is
	// called again with the new value. When fn returns a value equal to
	// old nothing is written. An error of fn ends Update with that error.
	// Update returns the value stored.
	Update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) ([]byte, error)
}

// failuresState is failures as a FailureStore keeps them.
type failuresState struct {
	Times        []time.Time `json:"times,omitempty"`
	BlockedUntil time.Time   `json:"blocked,omitzero"`
}

func decodeFailures(b []byte) (*failures, error) {
	if b == nil {
		return nil, nil
	}
	var s failuresState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &failures{times: s.Times, blockedUntil: s.BlockedUntil}, nil
}

func storeKey(key netip.Addr) string { return "authfail:" + key.String() }

// NewFailureLimiter returns a limiter with the default settings.
func NewFailureLimiter() *FailureLimiter {
	return &FailureLimiter{MaxFailures: 5, Window: 15 * time.Minute, Delay: 2 * time.Second, Cooldown: 15 * time.Minute}
}

func (l *FailureLimiter) params() (slow, refuse int, window, cooldown time.Duration, max int) {
	slow, refuse, window, cooldown, max = l.MaxFailures, l.RefuseAfter, l.Window, l.Cooldown, l.MaxTracked
	if slow <= 0 {
		slow = 5
	}
	if refuse <= 0 {
		refuse = 2 * slow
	}
	if window <= 0 {
		window = 15 * time.Minute
	}
	if cooldown <= 0 {
		cooldown = 15 * time.Minute
	}
	if max <= 0 {
		max = 100000
	}
	return
}

func (l *FailureLimiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

func limitKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// prune drops failures older than the window. l.mu held.
func (f *failures) prune(now time.Time, window time.Duration) {
	i := 0
	for i < len(f.times) && now.Sub(f.times[i]) > window {
		i++
	}
	f.times = f.times[i:]
}

// Wait is called before checking credentials from remote. It returns a
// *RateLimitError while remote is refused, sleeps Delay (or until ctx is
// done, returning ctx's error) while it is slowed, and returns nil at once
// otherwise.
func (l *FailureLimiter) Wait(ctx context.Context, remote netip.Addr) error {
	slow, _, window, _, _ := l.params()
	key := limitKey(remote)
	now := l.clock()
	var n int
	if l.Store != nil {
		b, err := l.Store.Update(ctx, storeKey(key), func(old []byte) ([]byte, error) { return old, nil })
		if err != nil {
			return fmt.Errorf("auth: failure limiter: %w", err)
		}
		f, err := decodeFailures(b)
		if err != nil {
			return fmt.Errorf("auth: failure limiter: %w", err)
		}
		if f != nil {
			if now.Before(f.blockedUntil) {
				return &RateLimitError{Remote: remote, RetryAfter: f.blockedUntil.Sub(now)}
			}
			if f.blockedUntil.IsZero() {
				f.prune(now, window)
				n = len(f.times)
			}
		}
	} else {
		l.mu.Lock()
		f := l.clients[key]
		if f != nil {
			if now.Before(f.blockedUntil) {
				left := f.blockedUntil.Sub(now)
				l.mu.Unlock()
				return &RateLimitError{Remote: remote, RetryAfter: left}
			}
			if !f.blockedUntil.IsZero() {
				// Cool-down over: start counting again.
				delete(l.clients, key)
			} else {
				f.prune(now, window)
				n = len(f.times)
			}
		}
		l.mu.Unlock()
	}
	delay := l.Delay
	if delay == 0 {
		delay = 2 * time.Second
	}
	if n < slow || delay < 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Fail records a failed attempt from remote. It fails only with Store,
// when the store does.
func (l *FailureLimiter) Fail(ctx context.Context, remote netip.Addr) error {
	_, refuse, window, cooldown, max := l.params()
	key := limitKey(remote)
	now := l.clock()
	if l.Store != nil {
		_, err := l.Store.Update(ctx, storeKey(key), func(old []byte) ([]byte, error) {
			f, err := decodeFailures(old)
			if err != nil {
				return nil, err
			}
			if f == nil || (!f.blockedUntil.IsZero() && !now.Before(f.blockedUntil)) {
				// New, or cool-down over: start counting again.
				f = &failures{}
			}
			f.record(now, refuse, window, cooldown)
			return json.Marshal(failuresState{Times: f.times, BlockedUntil: f.blockedUntil})
		})
		if err != nil {
			return fmt.Errorf("auth: failure limiter: %w", err)
		}
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clients == nil {
		l.clients = make(map[netip.Addr]*failures)
	}
	f := l.clients[key]
	if f == nil {
		if len(l.clients) >= max {
			l.sweep(now, window)
		}
		if len(l.clients) >= max {
			// Still full of active offenders: forget an arbitrary one
			// rather than grow without bound.
			for k := range l.clients {
				delete(l.clients, k)
				break
			}
		}
		f = &failures{}
		l.clients[key] = f
	}
	f.record(now, refuse, window, cooldown)
	return nil
}

// record adds a failure at now.
func (f *failures) record(now time.Time, refuse int, window, cooldown time.Duration) {
	f.prune(now, window)
	f.times = append(f.times, now)
	if len(f.times) >= refuse && f.blockedUntil.IsZero() {
		f.blockedUntil = now.Add(cooldown)
	}
	if len(f.times) > refuse {
		f.times = f.times[len(f.times)-refuse:]
	}
}

// sweep drops addresses with nothing left to remember. l.mu held.
func (l *FailureLimiter) sweep(now time.Time, window time.Duration) {
	for k, f := range l.clients {
		f.prune(now, window)
		if len(f.times) == 0 && !now.Before(f.blockedUntil) {
			delete(l.clients, k)
		}
	}
}

// Failures returns the number of failures remembered for remote. It
// fails only with Store, when the store does.
func (l *FailureLimiter) Failures(ctx context.Context, remote netip.Addr) (int, error) {
	_, _, window, _, _ := l.params()
	if l.Store != nil {
		b, err := l.Store.Update(ctx, storeKey(limitKey(remote)), func(old []byte) ([]byte, error) { return old, nil })
		if err != nil {
			return 0, fmt.Errorf("auth: failure limiter: %w", err)
		}
		f, err := decodeFailures(b)
		now := l.clock()
		if err != nil || f == nil || (!f.blockedUntil.IsZero() && !now.Before(f.blockedUntil)) {
			// Unknown, or cool-down over: counting starts again.
			return 0, err
		}
		f.prune(now, window)
		return len(f.times), nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.clients[limitKey(remote)]
	if f == nil {
		return 0, nil
	}
	f.prune(l.clock(), window)
	return len(f.times), nil
}
