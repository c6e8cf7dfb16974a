package queue

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func delivery(t *testing.T, from string, route policy.Route, raw string, rcpts ...string) *policy.Delivery {
	tx := newTx("L1", from, rcpts...)
	return &policy.Delivery{Tx: tx, Rcpts: tx.Rcpts, Route: route, Message: newMessage(t, raw)}
}

func TestSafeMailbox(t *testing.T) {
	tests := []struct{ in, want string }{
		{"john", "john"},
		{"../../etc/passwd", "_.._etc_passwd"},
		{"..", "_"},
		{".hidden", "hidden"},
		{"a/b", "a_b"},
		{`a\b`, "a_b"},
		{"", "_"},
		{"tab\there", "tab_here"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := SafeMailbox(tt.in)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, filepath.Join("/root", got), filepath.Clean(filepath.Join("/root", got)))
			assert.Equal(t, "/root", filepath.Dir(filepath.Join("/root", got)), "stays one level under root")
		})
	}
	assert.Equal(t, "john.doe", MailboxName(policy.MustParseAddress("John.Doe@Example.com")))
}

var maildirName = regexp.MustCompile(`^\d+\.M\d+P\d+Q\d+\.[^/:]+$`)

func TestMaildir(t *testing.T) {
	root := t.TempDir()
	md := &Maildir{Root: root}
	d := delivery(t, "a@example.org", policy.Route{Transport: "maildir"}, testMsg, "John@example.com", "../evil@example.com")
	got := md.Deliver(context.Background(), d)
	require.Len(t, got, 2)
	for _, r := range got {
		assert.Equal(t, 250, r.Code)
	}
	for _, c := range []struct{ box, rcpt string }{{"john", "John@example.com"}, {"_evil", "../evil@example.com"}} {
		ents, err := os.ReadDir(filepath.Join(root, c.box, "new"))
		require.NoError(t, err, c.box)
		require.Len(t, ents, 1)
		assert.Regexp(t, maildirName, ents[0].Name())
		b, err := os.ReadFile(filepath.Join(root, c.box, "new", ents[0].Name()))
		require.NoError(t, err)
		want := "Return-Path: <a@example.org>\nDelivered-To: " + policy.MustParseAddress(c.rcpt).String() + "\n" + strings.ReplaceAll(testMsg, "\r\n", "\n")
		assert.Equal(t, want, string(b))
		tmp, err := os.ReadDir(filepath.Join(root, c.box, "tmp"))
		require.NoError(t, err)
		assert.Empty(t, tmp, "nothing left in tmp")
		_, err = os.Stat(filepath.Join(root, c.box, "cur"))
		assert.NoError(t, err)
	}

	// Route.Target names the mailbox; CRLF can be kept; names are unique.
	md2 := &Maildir{Root: root, KeepCRLF: true}
	d = delivery(t, "", policy.Route{Transport: "maildir", Target: "Shared"}, testMsg, "x@example.com", "y@example.com")
	md2.Deliver(context.Background(), d)
	ents, err := os.ReadDir(filepath.Join(root, "Shared", "new"))
	require.NoError(t, err)
	require.Len(t, ents, 2)
	b, err := os.ReadFile(filepath.Join(root, "Shared", "new", ents[0].Name()))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(b), "Return-Path: <>\r\nDelivered-To: "))
	assert.True(t, strings.HasSuffix(string(b), testMsg))

	// An unwritable root is a temporary failure.
	bad := &Maildir{Root: filepath.Join(root, "file")}
	require.NoError(t, os.WriteFile(bad.Root, nil, 0o600))
	r := bad.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, testMsg, "b@example.com"))
	assert.Equal(t, 451, r[0].Code)
}

func TestMbox(t *testing.T) {
	root := t.TempDir()
	mb := &Mbox{Root: root}
	raw := "Subject: quoting\r\n\r\nFrom here\r\n>From there\r\nnot From\r\nFrom"
	d := delivery(t, "a@example.org", policy.Route{}, raw, "bob@example.com")
	require.Equal(t, 250, mb.Deliver(context.Background(), d)[0].Code)
	d = delivery(t, "<>", policy.Route{Target: "bob"}, testMsg, "other@example.com")
	require.Equal(t, 250, mb.Deliver(context.Background(), d)[0].Code)
	b, err := os.ReadFile(filepath.Join(root, "bob"))
	require.NoError(t, err)
	s := string(b)
	msgs := regexp.MustCompile(`(?m)^From [^ ]+ [A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\n`).FindAllStringIndex(s, -1)
	require.Len(t, msgs, 2, s)
	first := s[msgs[0][1]:msgs[1][0]]
	assert.Equal(t, "Return-Path: <a@example.org>\nDelivered-To: bob@example.com\nSubject: quoting\n\n>From here\n>>From there\nnot From\nFrom\n\n", first) // "From" without a space needs no quoting
	assert.True(t, strings.HasPrefix(s[msgs[1][0]:], "From MAILER-DAEMON "))
	second := s[msgs[1][1]:]
	assert.Equal(t, "Return-Path: <>\nDelivered-To: other@example.com\n"+strings.ReplaceAll(testMsg, "\r\n", "\n")+"\n", strings.Replace(second, ">From the body", "From the body", 1))
	assert.Contains(t, second, "\n>From the body.\n")
	_, err = os.Stat(filepath.Join(root, "bob.lock"))
	assert.ErrorIs(t, err, os.ErrNotExist, "lock released")
}

func TestMboxConcurrentAppends(t *testing.T) {
	root := t.TempDir()
	mb := &Mbox{Root: root}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5 {
				r := mb.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{Target: "box"}, testMsg, "b@example.com"))
				assert.Equal(t, 250, r[0].Code)
			}
		})
	}
	wg.Wait()
	b, err := os.ReadFile(filepath.Join(root, "box"))
	require.NoError(t, err)
	assert.Equal(t, 40, bytes.Count(b, []byte("\nFrom a@example.org "))+boolInt(bytes.HasPrefix(b, []byte("From a@example.org "))))
	assert.Equal(t, 40, bytes.Count(b, []byte("Subject: hello\n")), "no interleaving")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestLocalDeliveryThroughScheduler(t *testing.T) {
	root := t.TempDir()
	chain := &policy.Chain{Logger: quietLogger()}
	chain.Delivery("local", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		if rcpt.Addr.Domain == "example.com" {
			route.Transport = "maildir"
		}
		return policy.Next()
	})
	h := newHarness(t, "", Config{Chain: chain, Transports: map[string]Transport{"maildir": &Maildir{Root: root}}, DefaultRoute: policy.Route{Transport: "mbox"}})
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "jane@example.com"), testMsg)
	h.wait("m1")
	assert.Equal(t, "", h.queueOf("m1"))
	ents, err := os.ReadDir(filepath.Join(root, "jane", "new"))
	require.NoError(t, err)
	assert.Len(t, ents, 1)
}

// TestSyncGroupsShareSyncs: callers arriving while a sync runs share the
// next one, and none returns before a sync that started after it arrived.
func TestSyncGroupsShareSyncs(t *testing.T) {
	var g syncGroups
	var calls atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	fail := errors.New("EIO")
	first := true
	fn := func() error {
		calls.Add(1)
		if first {
			first = false
			close(started)
			<-release
			return nil
		}
		return fail
	}
	firstDone := make(chan error, 1)
	go func() { firstDone <- g.do("k", fn) }()
	<-started
	const n = 16
	errs := make(chan error, n)
	var arrived sync.WaitGroup
	for range n {
		arrived.Add(1)
		go func() {
			arrived.Done()
			errs <- g.do("k", fn)
		}()
	}
	arrived.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		w := g.m["k"].waiting
		g.mu.Unlock()
		if w == n {
			break
		}
		time.Sleep(time.Millisecond) // waiting for the followers, not timing anything
	}
	assert.Empty(t, errs, "no follower returns before its own sync")
	close(release)
	require.NoError(t, <-firstDone)
	for range n {
		assert.ErrorIs(t, <-errs, fail, "followers get the outcome of the sync made for them")
	}
	assert.Equal(t, int32(2), calls.Load(), "16 callers arriving during one sync share one more")
	// Another key is independent.
	require.NoError(t, g.do("other", func() error { return nil }))
}

// TestLargeMessageStreams: a 20 MiB message goes from the spool to a
// maildir (CRLF to LF) without being held in memory: what the load and the
// delivery allocate does not grow with its size.
func TestLargeMessageStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	sp, err := Open(filepath.Join(dir, "spool"), SpoolConfig{Logger: quietLogger(), UnsafeNoSync: true})
	require.NoError(t, err)
	defer sp.Close()
	const size = 20 << 20
	src, err := os.Create(filepath.Join(dir, "big.eml"))
	require.NoError(t, err)
	_, err = src.WriteString(testMsg)
	require.NoError(t, err)
	line := strings.Repeat("y", 78) + "\r\n"
	for n := len(testMsg); n < size; n += len(line) {
		_, err = src.WriteString(line)
		require.NoError(t, err)
	}
	st, err := src.Stat()
	require.NoError(t, err)
	m, err := policy.NewMessage(src, st.Size(), src)
	require.NoError(t, err)
	require.NoError(t, sp.Enqueue(context.Background(), newTx("big", "a@example.org", "b@example.com"), m))
	m.Close()

	md := &Maildir{Root: filepath.Join(dir, "mail")}
	deliverOnce := func() {
		_, env, m, err := sp.Load("big")
		require.NoError(t, err)
		defer m.Close()
		d := &policy.Delivery{Tx: env.Transaction(), Rcpts: env.Transaction().Rcpts, Route: policy.Route{Transport: "maildir"}, Message: m}
		require.Equal(t, 250, md.Deliver(context.Background(), d)[0].Code)
	}
	deliverOnce() // warm the pools
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	deliverOnce()
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("20 MiB message load + maildir delivery allocated %d KiB", alloc>>10)
	assert.Less(t, alloc, uint64(1<<20), "allocation does not grow with the message")
	ents, err := os.ReadDir(filepath.Join(dir, "mail", "b", "new"))
	require.NoError(t, err)
	require.Len(t, ents, 2)
	info, err := ents[0].Info()
	require.NoError(t, err)
	assert.Greater(t, info.Size(), int64(size-size/40), "delivered whole (LF line ends)")
}

// TestSyncGroupsFailWritesBegunBeforeAFailure: a round that fails may have
// reported the writeback error of a caller that was still writing; that
// caller fails too even if its own round succeeds, and one that began after
// the failure does not.
func TestSyncGroupsFailWritesBegunBeforeAFailure(t *testing.T) {
	var g syncGroups
	fail := errors.New("EIO")
	sinceB := g.begin("k") // B starts writing
	require.ErrorIs(t, g.doSince("k", g.begin("k"), func() error { return fail }), fail, "A's round fails")
	require.ErrorIs(t, g.doSince("k", sinceB, func() error { return nil }), errEarlierSync,
		"B was writing while a round failed")
	require.NoError(t, g.doSince("k", g.begin("k"), func() error { return nil }), "C began after the failure")
	require.NoError(t, g.do("k", func() error { return nil }), "do (directory syncs) is not concerned")
}

// TestSyncGroupsJoinedFailure: a caller that joined sees a failure of any
// round since it arrived, even when a later round, which ended before the
// caller woke, succeeded.
func TestSyncGroupsJoinedFailure(t *testing.T) {
	var g syncGroups
	fail := errors.New("EIO")
	g.mu.Lock()
	s := g.group("k")
	s.busy, s.started = true, 1 // round 1 under way
	g.mu.Unlock()
	joined := make(chan error, 1)
	go func() { joined <- g.do("k", func() error { return nil }) }() // its round: 2
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		w := s.waiting
		g.mu.Unlock()
		if w == 1 {
			break
		}
		time.Sleep(time.Millisecond) // waiting for the joiner, not timing anything
	}
	// Round 1 ends, round 2 (run by another caller) fails, round 3
	// succeeds, all before the joiner gets the lock back.
	g.mu.Lock()
	s.busy, s.started, s.done = false, 3, 3
	s.failed, s.failedErr = 2, fail
	s.cond.Broadcast()
	g.mu.Unlock()
	assert.ErrorIs(t, <-joined, fail)
}
