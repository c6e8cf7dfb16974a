package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// Low-cost hashes keep the tests fast; the code is cost-agnostic.
var (
	hashOnce  sync.Once
	hashAlice []byte // "alice-pw"
	hashBob   []byte // "bob-pw"
)

func testHashes(t testing.TB) (alice, bob string) {
	hashOnce.Do(func() {
		var err error
		hashAlice, err = bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
		if err != nil {
			panic(err)
		}
		hashBob, err = bcrypt.GenerateFromPassword([]byte("bob-pw"), bcrypt.MinCost)
		if err != nil {
			panic(err)
		}
	})
	return string(hashAlice), string(hashBob)
}

// writeFile writes data to path durably (write, fsync, rename), as an
// administrator's editor would replace it.
func writeFile(t testing.TB, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	_, err = f.WriteString(data)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	require.NoError(t, os.Rename(tmp, path))
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestParseCredentials(t *testing.T) {
	ha, hb := testHashes(t)
	tests := []struct {
		name     string
		in       string
		keys     []string
		badLines []int
	}{
		{"empty", "", nil, nil},
		{"comments and blanks", "# users\n\n   \n\t# more\n", nil, nil},
		{"two users", "alice@Example.COM:" + ha + "\n  bob@example.com : " + hb + "  \n", []string{"alice@example.com", "bob@example.com"}, nil},
		{"crlf lines", "alice@example.com:" + ha + "\r\n", []string{"alice@example.com"}, nil},
		{"trailing dot and IDN", "alice@bücher.example.:" + ha + "\n", []string{"alice@xn--bcher-kva.example"}, nil},
		{"quoted local part with colon", `"a:b"@example.com:` + ha + "\n", []string{`"a:b"@example.com`}, nil},
		{"local part case kept", "Alice@example.com:" + ha + "\nalice@example.com:" + hb + "\n", []string{"Alice@example.com", "alice@example.com"}, nil},
		{"no colon", "# c\nalice@example.com " + ha + "\n", nil, []int{2}},
		{"bad hash", "alice@example.com:secret\n", nil, []int{1}},
		{"md5 crypt is not bcrypt", "alice@example.com:$1$abc$def\n", nil, []int{1}},
		{"no domain", "alice:" + ha + "\n", nil, []int{1}},
		{"null address", "<>:" + ha + "\n", nil, []int{1}},
		{"angle brackets", "<alice@example.com>:" + ha + "\n", nil, []int{1}},
		{"bad domain", "alice@exa mple.com:" + ha + "\n", nil, []int{1}},
		{"duplicate differing in domain case", "alice@example.com:" + ha + "\nalice@EXAMPLE.com:" + hb + "\n", []string{"alice@example.com"}, []int{2}},
		{"good lines kept around bad ones", "x\nalice@example.com:" + ha + "\ny:z\nbob@example.com:" + hb + "\n", []string{"alice@example.com", "bob@example.com"}, []int{1, 3}},
		{"line too long", "alice@example.com:" + ha + "\n" + strings.Repeat("a", maxCredentialLine+10) + "\n", []string{"alice@example.com"}, []int{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := ParseCredentials(strings.NewReader(tt.in))
			var keys []string
			for k := range users {
				keys = append(keys, k)
			}
			assert.ElementsMatch(t, tt.keys, keys)
			if len(tt.badLines) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			var lines []int
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var ce *CredentialError
				require.True(t, errors.As(e, &ce), "error %v is not a *CredentialError", e)
				lines = append(lines, ce.Line)
				assert.Contains(t, ce.Error(), fmt.Sprintf("line %d", ce.Line))
			}
			assert.Equal(t, tt.badLines, lines)
		})
	}
}

func FuzzParseCredentials(f *testing.F) {
	ha, hb := testHashes(f)
	f.Add("alice@example.com:" + ha + "\nbob@EXAMPLE.com:" + hb + "\n")
	f.Add("# comment\n\n\"q:x\"@example.com:" + ha)
	f.Add("bad line\n:\n@:\nx@y:$2a$\n")
	f.Add("\xff@\xfe:" + ha)
	f.Fuzz(func(t *testing.T, in string) {
		users, err := ParseCredentials(strings.NewReader(in))
		for k, h := range users {
			// Every key is normalized: parsing it again gives itself.
			k2, err := identityKey(k)
			if err != nil || k2 != k {
				t.Fatalf("key %q not normalized: %q, %v", k, k2, err)
			}
			if _, err := bcrypt.Cost(h); err != nil {
				t.Fatalf("accepted bad hash %q for %q", h, k)
			}
		}
		if err != nil {
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var ce *CredentialError
				if errors.As(e, &ce) && ce.Line < 1 {
					t.Fatalf("bad line number in %v", e)
				}
			}
		}
	})
}

// newTestFile loads content; a nil lim turns failure limiting off (which
// the API does not offer), so tests can fail at will.
func newTestFile(t *testing.T, content string, lim *FailureLimiter) *CredentialFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, content)
	f, err := LoadCredentialFile(path, CredentialOptions{Limiter: lim, Logger: quietLogger()})
	require.NoError(t, err)
	if lim == nil {
		f.limiter = nil
	}
	return f
}

func TestCredentialFileAuthenticate(t *testing.T) {
	ha, hb := testHashes(t)
	f := newTestFile(t, "# test users\nalice@example.com:"+ha+"\nbob@xn--bcher-kva.example:"+hb+"\n", nil)
	require.Equal(t, 2, f.Len())
	ip := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		user, pw string
		ok       bool
	}{
		{"alice@example.com", "alice-pw", true},
		{"alice@EXAMPLE.Com", "alice-pw", true},
		{" alice@example.com ", "alice-pw", true},
		{"alice@example.com.", "alice-pw", true},
		{"bob@bücher.example", "bob-pw", true},
		{"bob@XN--BCHER-KVA.example", "bob-pw", true},
		{"Alice@example.com", "alice-pw", false}, // local part is exact
		{"alice@example.com", "bob-pw", false},
		{"alice@example.com", "", false},
		{"alice@example.com", "alice-pw ", false},
		{"carol@example.com", "alice-pw", false},
		{"alice", "alice-pw", false},
		{"", "", false},
		{"<alice@example.com>", "alice-pw", false},
	}
	for _, tt := range tests {
		t.Run(tt.user+"/"+tt.pw, func(t *testing.T) {
			err := f.Authenticate(context.Background(), ip, tt.user, tt.pw)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, ErrInvalidCredentials)
			}
		})
	}
}

func TestCredentialFileDummyHashMatchesCost(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost+1)
	require.NoError(t, err)
	f := newTestFile(t, "alice@example.com:"+string(h)+"\n", NewFailureLimiter())
	cost, err := bcrypt.Cost(f.dummy)
	require.NoError(t, err)
	assert.Equal(t, bcrypt.MinCost+1, cost, "unknown users must cost the same bcrypt work as known ones")

	// An empty file still compares unknown users against a real hash.
	f2 := newTestFile(t, "", NewFailureLimiter())
	cost, err = bcrypt.Cost(f2.dummy)
	require.NoError(t, err)
	assert.Equal(t, bcrypt.DefaultCost, cost)
}

func TestLoadCredentialFileErrors(t *testing.T) {
	ha, _ := testHashes(t)
	_, err := LoadCredentialFile(filepath.Join(t.TempDir(), "missing"), CredentialOptions{Logger: quietLogger()})
	require.ErrorIs(t, err, os.ErrNotExist)

	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, "alice@example.com:"+ha+"\nnonsense\n")
	_, err = LoadCredentialFile(path, CredentialOptions{Logger: quietLogger()})
	require.Error(t, err)
	var ce *CredentialError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Line)
	assert.Equal(t, path, ce.Path)
	assert.Contains(t, err.Error(), path+":2:")
}

func TestCredentialFileReload(t *testing.T) {
	ha, hb := testHashes(t)
	f := newTestFile(t, "alice@example.com:"+ha+"\n", nil)
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.1")
	require.NoError(t, f.Authenticate(ctx, ip, "alice@example.com", "alice-pw"))

	// alice's password changes, bob is added.
	writeFile(t, f.Path(), "alice@example.com:"+hb+"\nbob@example.com:"+hb+"\n")
	require.NoError(t, f.Reload())
	assert.ErrorIs(t, f.Authenticate(ctx, ip, "alice@example.com", "alice-pw"), ErrInvalidCredentials)
	assert.NoError(t, f.Authenticate(ctx, ip, "alice@example.com", "bob-pw"))
	assert.NoError(t, f.Authenticate(ctx, ip, "bob@example.com", "bob-pw"))

	// A broken file is refused and the old users stay.
	writeFile(t, f.Path(), "garbage\n")
	require.Error(t, f.Reload())
	assert.NoError(t, f.Authenticate(ctx, ip, "bob@example.com", "bob-pw"))
	assert.Equal(t, 2, f.Len())

	// So does a vanished file.
	require.NoError(t, os.Remove(f.Path()))
	require.ErrorIs(t, f.Reload(), os.ErrNotExist)
	assert.NoError(t, f.Authenticate(ctx, ip, "bob@example.com", "bob-pw"))
}

func TestCredentialFileWatch(t *testing.T) {
	ha, hb := testHashes(t)
	f := newTestFile(t, "alice@example.com:"+ha+"\n", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, 10*time.Millisecond) }()
	ip := netip.MustParseAddr("192.0.2.1")

	// A bad version is ignored...
	writeFile(t, f.Path(), "garbage line\n")
	time.Sleep(50 * time.Millisecond)
	assert.NoError(t, f.Authenticate(context.Background(), ip, "alice@example.com", "alice-pw"))

	// ...and a good one is picked up. The size differs from the bad
	// version, so the change shows even with a coarse mtime.
	writeFile(t, f.Path(), "# v2\nbob@example.com:"+hb+"\n")
	require.Eventually(t, func() bool {
		return f.Authenticate(context.Background(), ip, "bob@example.com", "bob-pw") == nil
	}, 5*time.Second, 10*time.Millisecond)
	assert.ErrorIs(t, f.Authenticate(context.Background(), ip, "alice@example.com", "alice-pw"), ErrInvalidCredentials)

	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
	assert.Error(t, f.Watch(context.Background(), 0))
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// mapStore is a FailureStore in a map, as a shared store behaves: values
// are copied in and out, and a value equal to the old one is not written.
type mapStore struct {
	mu     sync.Mutex
	m      map[string][]byte
	writes int
	err    error // returned by every Update when set
}

func (s *mapStore) Update(_ context.Context, key string, fn func(old []byte) ([]byte, error)) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	old := s.m[key]
	v, err := fn(bytes.Clone(old))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(v, old) {
		if s.m == nil {
			s.m = map[string][]byte{}
		}
		s.m[key] = bytes.Clone(v)
		s.writes++
	}
	return v, nil
}

// forStores runs test with the limiter's own memory and with a store.
func forStores(t *testing.T, test func(*testing.T, FailureStore)) {
	t.Run("memory", func(t *testing.T) { test(t, nil) })
	t.Run("store", func(t *testing.T) { test(t, &mapStore{}) })
}

func failuresOf(t *testing.T, lim *FailureLimiter, ip netip.Addr) int {
	t.Helper()
	n, err := lim.Failures(context.Background(), ip)
	require.NoError(t, err)
	return n
}

func TestFailureLimiter(t *testing.T) {
	forStores(t, testFailureLimiter)
}

func testFailureLimiter(t *testing.T, store FailureStore) {
	ha, _ := testHashes(t)
	clock := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	lim := &FailureLimiter{MaxFailures: 3, RefuseAfter: 5, Window: time.Minute, Delay: 20 * time.Millisecond, Cooldown: 10 * time.Minute, Store: store, now: clock.now}
	f := newTestFile(t, "alice@example.com:"+ha+"\n", lim)
	ctx := context.Background()
	attacker := netip.MustParseAddr("198.51.100.7")
	other := netip.MustParseAddr("198.51.100.8")

	for i := 1; i <= 4; i++ {
		err := f.Authenticate(ctx, attacker, "alice@example.com", "guess")
		require.ErrorIs(t, err, ErrInvalidCredentials, "attempt %d", i)
		assert.Equal(t, i, failuresOf(t, lim, attacker))
	}
	// Slowed (3 <= failures < 5): a cancelled context ends the wait with
	// the context's error, not with a verdict on the password.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, f.Authenticate(cctx, attacker, "alice@example.com", "alice-pw"), context.Canceled)
	wctx, wcancel := context.WithCancel(ctx)
	time.AfterFunc(5*time.Millisecond, wcancel)
	lim.Delay = time.Hour
	require.ErrorIs(t, lim.Wait(wctx, attacker), context.Canceled)
	lim.Delay = 20 * time.Millisecond
	// A slowed attempt with the right password still succeeds.
	require.NoError(t, f.Authenticate(ctx, attacker, "alice@example.com", "alice-pw"))

	// The fifth failure starts the cool-down: even the right password is
	// refused, unchecked, with a temporary error.
	require.ErrorIs(t, f.Authenticate(ctx, attacker, "alice@example.com", "guess"), ErrInvalidCredentials)
	err := f.Authenticate(ctx, attacker, "alice@example.com", "alice-pw")
	require.ErrorIs(t, err, ErrTooManyFailures)
	var temp interface{ Temporary() bool }
	require.ErrorAs(t, err, &temp)
	assert.True(t, temp.Temporary())
	var rl *RateLimitError
	require.ErrorAs(t, err, &rl)
	assert.Equal(t, 10*time.Minute, rl.RetryAfter)
	assert.NotErrorIs(t, err, ErrInvalidCredentials)

	// Other clients are not affected.
	require.NoError(t, f.Authenticate(ctx, other, "alice@example.com", "alice-pw"))

	// After the cool-down the count starts again.
	clock.add(10*time.Minute + time.Second)
	require.NoError(t, f.Authenticate(ctx, attacker, "alice@example.com", "alice-pw"))
	assert.Equal(t, 0, failuresOf(t, lim, attacker))
}

func TestFailureLimiterWindow(t *testing.T) {
	forStores(t, testFailureLimiterWindow)
}

func testFailureLimiterWindow(t *testing.T, store FailureStore) {
	clock := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	lim := &FailureLimiter{MaxFailures: 2, RefuseAfter: 3, Window: time.Minute, Delay: -1, Store: store, now: clock.now}
	ip := netip.MustParseAddr("203.0.113.9")
	require.NoError(t, lim.Fail(context.Background(), ip))
	require.NoError(t, lim.Fail(context.Background(), ip))
	clock.add(61 * time.Second)
	assert.Equal(t, 0, failuresOf(t, lim, ip), "failures older than the window are forgotten")
	require.NoError(t, lim.Fail(context.Background(), ip))
	require.NoError(t, lim.Wait(context.Background(), ip))
}

func TestFailureLimiterIPv6Prefix(t *testing.T) {
	forStores(t, testFailureLimiterIPv6Prefix)
}

func testFailureLimiterIPv6Prefix(t *testing.T, store FailureStore) {
	lim := &FailureLimiter{MaxFailures: 1, RefuseAfter: 2, Delay: -1, Store: store}
	a := netip.MustParseAddr("2001:db8:1:2::1")
	b := netip.MustParseAddr("2001:db8:1:2:ffff::99") // same /64
	c := netip.MustParseAddr("2001:db8:1:3::1")       // another /64
	require.NoError(t, lim.Fail(context.Background(), a))
	require.NoError(t, lim.Fail(context.Background(), b))
	var rl *RateLimitError
	require.ErrorAs(t, lim.Wait(context.Background(), a), &rl)
	require.ErrorAs(t, lim.Wait(context.Background(), netip.MustParseAddr("2001:db8:1:2::abcd")), &rl)
	require.NoError(t, lim.Wait(context.Background(), c))
	// An IPv4-mapped address counts as the IPv4 address.
	require.NoError(t, lim.Fail(context.Background(), netip.MustParseAddr("::ffff:192.0.2.1")))
	assert.Equal(t, 1, failuresOf(t, lim, netip.MustParseAddr("192.0.2.1")))
}

func TestFailureLimiterBounded(t *testing.T) {
	lim := &FailureLimiter{MaxTracked: 10, Delay: -1}
	for i := range 100 {
		require.NoError(t, lim.Fail(context.Background(), netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i)})))
	}
	lim.mu.Lock()
	n := len(lim.clients)
	lim.mu.Unlock()
	assert.LessOrEqual(t, n, 10)
}

// TestFailureLimiterStoreFails: a store that fails refuses the attempt
// with an error that is not a verdict on the password (454 4.7.0, not 535),
// and the failure is not silently forgotten by the limiter.
func TestFailureLimiterStoreFails(t *testing.T) {
	ha, _ := testHashes(t)
	store := &mapStore{err: errors.New("no quorum")}
	lim := &FailureLimiter{Delay: -1, Store: store}
	f := newTestFile(t, "alice@example.com:"+ha+"\n", lim)
	err := f.Authenticate(context.Background(), netip.MustParseAddr("192.0.2.1"), "alice@example.com", "alice-pw")
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrInvalidCredentials)
	assert.ErrorContains(t, err, "no quorum")
	require.Error(t, lim.Fail(context.Background(), netip.MustParseAddr("192.0.2.1")))
	_, err = lim.Failures(context.Background(), netip.MustParseAddr("192.0.2.1"))
	require.Error(t, err)
}

// TestFailureLimiterStoreShared: two limiters (two nodes) on one store
// count one client's failures together.
func TestFailureLimiterStoreShared(t *testing.T) {
	store := &mapStore{}
	a := &FailureLimiter{MaxFailures: 2, RefuseAfter: 4, Delay: -1, Store: store}
	b := &FailureLimiter{MaxFailures: 2, RefuseAfter: 4, Delay: -1, Store: store}
	ip := netip.MustParseAddr("198.51.100.7")
	ctx := context.Background()
	for i := range 4 {
		lim := a
		if i%2 == 1 {
			lim = b
		}
		require.NoError(t, lim.Wait(ctx, ip), "attempt %d", i)
		require.NoError(t, lim.Fail(ctx, ip))
	}
	var rl *RateLimitError
	require.ErrorAs(t, a.Wait(ctx, ip), &rl)
	require.ErrorAs(t, b.Wait(ctx, ip), &rl)
	assert.Equal(t, 4, store.writes, "only failures write; Wait reads")
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	require.NoError(t, err)
	require.NoError(t, bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")))
	users, err := ParseCredentials(strings.NewReader("u@example.com:" + h))
	require.NoError(t, err)
	assert.Len(t, users, 1)

	_, err = HashPassword("")
	assert.Error(t, err)
	_, err = HashPassword(strings.Repeat("x", 73))
	assert.ErrorIs(t, err, bcrypt.ErrPasswordTooLong)
}
