package main

// Whole-server hardening tests (issue 7) against the built doe-family
// binary: kill -9 during a bounded load, a full or broken spool during
// DATA, DNS that fails or never answers, 2,000 idle connections, and a
// message larger than the size limit, each followed by a normal client that
// must still be served. The harness (newEnv, send, waitFiles, ...) is in
// e2e_test.go.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/diskfull"
)

// skipShort skips the long hardening tests under -short; a plain
// `go test -race ./...` (CI) runs them.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("long hardening test: runs without -short")
	}
}

// procBytes returns a field of /proc/<pid>/status (VmRSS, VmHWM) in bytes.
func procBytes(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			require.Len(t, f, 2, "%s line %q", field, line)
			require.Equal(t, "kB", f[1])
			n, err := strconv.ParseInt(f[0], 10, 64)
			require.NoError(t, err)
			return n << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// peakMeter follows the peak RSS of a process while something runs: it
// resets the kernel's high-water mark (clear_refs 5, so VmHWM is exact) and
// also samples VmRSS, in case the reset is not permitted.
type peakMeter struct {
	t      *testing.T
	pid    int
	base   int64
	reset  bool
	max    atomic.Int64
	stop   chan struct{}
	done   chan struct{}
	report string
}

func startPeakMeter(t *testing.T, pid int) *peakMeter {
	t.Helper()
	runtimeSettle()
	m := &peakMeter{t: t, pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	m.base = procBytes(t, pid, "VmRSS")
	m.reset = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
	m.max.Store(m.base)
	go func() {
		defer close(m.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				if err != nil {
					continue
				}
				for _, line := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
						if f := strings.Fields(v); len(f) == 2 {
							if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n<<10 > m.max.Load() {
								m.max.Store(n << 10)
							}
						}
					}
				}
			}
		}
	}()
	return m
}

// sample returns the peak RSS growth so far.
func (m *peakMeter) sample() (base, peak, growth int64) {
	peak = m.max.Load()
	if m.reset {
		if hwm := procBytes(m.t, m.pid, "VmHWM"); hwm > peak {
			peak = hwm
		}
	}
	return m.base, peak, peak - m.base
}

// finish stops the meter and returns the peak RSS growth over the base.
func (m *peakMeter) finish() (base, peak, growth int64) {
	close(m.stop)
	<-m.done
	return m.sample()
}

// runtimeSettle gives the server a moment to finish what it was doing
// (deliveries, log writes) before a memory baseline is taken.
func runtimeSettle() { time.Sleep(300 * time.Millisecond) }

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

// dialFrom connects to addr from the loopback address ip (any 127/8
// address is local).
func dialFrom(ip, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// transact runs one transaction on an open client.
func transact(c *gosmtp.Client, from string, to []string, body io.Reader) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// sendFrom runs one transaction on the MTA port from the loopback address
// ip (send in e2e_test.go always comes from 127.0.0.1).
func sendFrom(ip, addr, from string, to []string, msg string) error {
	conn, err := dialFrom(ip, addr)
	if err != nil {
		return err
	}
	c := gosmtp.NewClient(conn)
	c.CommandTimeout = 30 * time.Second
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	if err := transact(c, from, to, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

// submit sends body on the submission port after STARTTLS and AUTH as from.
func submit(addr, from string, to []string, body io.Reader) error {
	c, err := gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("laptop.example.net"); err != nil {
		return err
	}
	if err := c.Auth(sasl.NewPlainClient("", from, password)); err != nil {
		return err
	}
	if err := transact(c, from, to, body); err != nil {
		return err
	}
	return c.Quit()
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out after %v waiting for %s", d, what)
		time.Sleep(50 * time.Millisecond)
	}
}

func countFiles(dir string) int {
	entries, _ := os.ReadDir(dir)
	return len(entries)
}

// mailboxHas reports whether a message with this Subject is in dir.
func mailboxHas(t *testing.T, dir, subject string) bool {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		b, err := os.ReadFile(filepath.Join(dir, en.Name()))
		require.NoError(t, err)
		if bytes.Contains(b, []byte("\nSubject: "+subject+"\n")) || bytes.Contains(b, []byte("\nSubject: "+subject+"\r\n")) {
			return true
		}
	}
	return false
}

// hardenEnv is newEnv with an SPF record that lets any loopback address
// send for loopback.test, the sender of normalClient.
func hardenEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	e := newEnv(t, extra...)
	e.dns.Add(`loopback.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"`)
	return e
}

// normalClient proves the server still serves: a message from outside to
// a local user gets 250 and reaches the maildir.
func normalClient(t *testing.T, e *env, ip, subject string) {
	t.Helper()
	require.NoError(t, sendFrom(ip, e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
		message("someone@loopback.test", "jane@doe-family.com", subject, "still served")),
		"a normal client must be served")
	dir := filepath.Join(e.maildir, "jane", "new")
	waitFor(t, 20*time.Second, "delivery of "+subject, func() bool { return mailboxHas(t, dir, subject) })
}

func requireTemporary(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, "%s: a 250 for mail that is not safely stored", what)
	code, enh := smtpCode(t, err)
	assert.Contains(t, []int{451, 452}, code, "%s: reply %d %s", what, code, enh)
	assert.True(t, strings.HasPrefix(enh, "4."), "%s: enhanced code %s", what, enh)
}

// TestHardeningKill9DuringLoad: 8 clients send a bounded load of small
// messages to local users; the server is killed with SIGKILL once a third
// of them got a 250, restarted on the same queue and maildir, and the
// clients finish (resending what got no 250, as a real client does). Every
// message that got a 250 — above all from the killed server — must be in
// the maildir once the queue has drained; a message resent after a lost
// reply may arrive twice (delivery is at least once). On each store (the
// spool and the journal).
func TestHardeningKill9DuringLoad(t *testing.T) {
	skipShort(t)
	forStores(t, hardeningKill9DuringLoad)
}

func hardeningKill9DuringLoad(t *testing.T, st storeKind) {
	const (
		total   = 2000
		workers = 8
	)
	e := hardenEnv(t, st.args...)
	msgRe := regexp.MustCompile(`(?m)^Message-ID: <load-(\d+)@test>\r?$`)
	user := func(i int) string { return fmt.Sprintf("load%d@doe-family.com", i%workers) }

	var (
		mu       sync.Mutex
		acked    = map[int]bool{}
		attempts atomic.Int64
		failures atomic.Int64
		failed   = map[int]bool{} // messages with a transaction that got no 250
	)
	work := make(chan int, total) // at most total items are queued or in flight
	for i := range total {
		work <- i
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	worker := func() {
		for ctx.Err() == nil {
			conn, err := net.DialTimeout("tcp", e.listen, 2*time.Second)
			if err != nil { // the server is down: try again shortly
				time.Sleep(20 * time.Millisecond)
				continue
			}
			c := gosmtp.NewClient(conn)
			c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
			if err := c.Hello("client.example.org"); err != nil {
				c.Close()
				time.Sleep(20 * time.Millisecond)
				continue
			}
			for {
				var i int
				select {
				case i = <-work:
				case <-ctx.Done():
					c.Close()
					return
				}
				attempts.Add(1)
				rcpt := user(i)
				subject := fmt.Sprintf("load-%04d", i)
				err := transact(c, "someone@example.org", []string{rcpt}, strings.NewReader(message("someone@example.org", rcpt, subject, "message "+subject)))
				if err != nil {
					failures.Add(1)
					mu.Lock()
					failed[i] = true
					mu.Unlock()
					work <- i // no 250: send it again, on a new connection
					c.Close()
					break
				}
				mu.Lock()
				acked[i] = true
				if len(acked) == total {
					cancel()
				}
				mu.Unlock()
			}
		}
	}
	ackedNow := func() map[int]bool {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[int]bool, len(acked))
		for k := range acked {
			out[k] = true
		}
		return out
	}

	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() { defer wg.Done(); worker() }()
	}
	waitFor(t, 60*time.Second, "a third of the load to be acknowledged", func() bool { return len(ackedNow()) >= total/3 })
	e.stop(syscall.SIGKILL)
	beforeKill := ackedNow() // nothing can be acknowledged while the server is down
	attemptsAtKill := attempts.Load()
	require.Less(t, len(beforeKill), total, "the kill must come in the middle of the load")
	killedAt := time.Since(start)
	e.start()
	wg.Wait()
	ackedAt := time.Since(start)
	final := ackedNow()
	require.Len(t, final, total, "every message must get its 250 in the end (the clients retry)")

	// Wait for the queue to drain into the maildir.
	delivered := map[int]int{}
	seen := map[string]bool{}
	files := 0
	scan := func() {
		for u := range workers {
			dir := filepath.Join(e.maildir, fmt.Sprintf("load%d", u), "new")
			entries, _ := os.ReadDir(dir)
			for _, en := range entries {
				p := filepath.Join(dir, en.Name())
				if seen[p] {
					continue
				}
				b, err := os.ReadFile(p)
				require.NoError(t, err)
				m := msgRe.FindSubmatch(b)
				require.NotNil(t, m, "delivered file %s has no load Message-ID", p)
				n, _ := strconv.Atoi(string(m[1]))
				seen[p] = true
				files++
				delivered[n]++
			}
		}
	}
	waitFor(t, 90*time.Second, "every acknowledged message in the maildir", func() bool {
		scan()
		return len(delivered) >= total
	})
	counts := e.waitDrained(20 * time.Second)
	scan()
	drainedAt := time.Since(start)

	lost := 0
	for i := range beforeKill {
		if delivered[i] == 0 {
			lost++
		}
	}
	// Duplicates come from a resent message whose first 250 was lost, or
	// from a delivery the killed server made but had not recorded. A
	// message the restarted server took in one go is delivered once.
	dups, dupsResent, dupsRedelivered := 0, 0, 0
	for i, n := range delivered {
		dups += n - 1
		switch {
		case n == 1:
		case failed[i]:
			dupsResent += n - 1
		case beforeKill[i]:
			dupsRedelivered += n - 1
		default:
			t.Errorf("load-%04d was acknowledged once by the restarted server but delivered %d times", i, n)
		}
	}
	t.Logf("kill -9 load: %d messages on %d connections; %d DATA transactions sent (%d before the kill), %d acknowledged (%d by the killed server), %d transactions without 250 (resent), %d files delivered, %d distinct messages, %d duplicates (%d of resent messages, %d redelivered after the kill), %d acknowledged-before-kill lost",
		total, workers, attempts.Load(), attemptsAtKill, len(final), len(beforeKill), failures.Load(), files, len(delivered), dups, dupsResent, dupsRedelivered, lost)
	t.Logf("kill -9 load: killed after %v, all acknowledged after %v, queue drained after %v",
		killedAt.Round(time.Millisecond), ackedAt.Round(time.Millisecond), drainedAt.Round(time.Millisecond))
	assert.Zero(t, lost, "messages acknowledged by the killed server were lost")
	for i := range final {
		assert.Positive(t, delivered[i], "acknowledged message load-%04d not delivered", i)
	}
	assert.Zero(t, counts["dead"], "nothing may fail for good")
	assert.Zero(t, counts["corrupt"], "kill -9 must leave no corrupt entry")

	normalClient(t, e, "127.0.0.1", "after-kill")
}

// TestHardeningDiskFull: a full filesystem under the receiving spool (where
// DATA is streamed, $TMPDIR of the server) or under the queue gives 451 and
// never 250 for mail not stored, large or small; every message that got a
// 250 is delivered; once space is back the server serves normally, on the
// same connection. On each store. The journal writes its segments whole
// before use: on a full disk it goes on taking messages until the room it
// owns (the rest of the active segment and the one made ready next) is
// used, then refuses; it runs here with 256 KiB segments, so that this
// takes a few dozen messages, not 128 MiB of them.
func TestHardeningDiskFull(t *testing.T) {
	forStores(t, hardeningDiskFull)
}

// journalTestSegment is the journal's segment size in the disk-full test.
const journalTestSegment = 256 << 10

func hardeningDiskFull(t *testing.T, st storeKind) {
	recvFS := diskfull.Tmpfs(t, "2m")
	queueFS := diskfull.Tmpfs(t, "4m")
	e := hardenEnv(t, st.args...)
	// Restart it with the receiving spool ($TMPDIR) and the queue on the
	// small filesystems.
	e.stop(syscall.SIGTERM)
	t.Setenv("TMPDIR", recvFS)
	e.spool = filepath.Join(queueFS, "queue")
	e.args = append(e.args, "-spool", e.spool)
	if st.prealloc {
		e.args = append(e.args, "-journal-segment-size", fmt.Sprint(journalTestSegment))
	}
	e.start()
	normalClient(t, e, "127.0.0.1", "before-full")

	if st.name == "spool" { // the same for every store: run once
		big := message("someone@example.org", "jane@doe-family.com", "full-recv", strings.Repeat(strings.Repeat("y", 98)+"\r\n", 3000))
		t.Run("receiving spool full", func(t *testing.T) {
			filler := diskfull.Fill(t, recvFS)
			err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, big)
			requireTemporary(t, err, "receiving spool full")
			require.NoError(t, os.Remove(filler))
			normalClient(t, e, "127.0.0.1", "after-recv-full")
			assert.False(t, mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "full-recv"))
		})
	}

	t.Run("queue full", func(t *testing.T) {
		// The relayhost defers everything for now: what is accepted stays
		// in the queue (a delivered message would give the journal its
		// segment back for reuse).
		e.sink.fail.Store(1 << 20)
		// The files the store keeps for reuse (the spool's free/, the
		// journal's *.free) are room it owns: remove them, to leave it
		// only the room written before use.
		reusable, err := filepath.Glob(filepath.Join(e.spool, st.reusable))
		require.NoError(t, err)
		for _, f := range reusable {
			require.NoError(t, os.Remove(f))
		}
		filler := diskfull.Fill(t, queueFS)
		from, to := "john@doe-family.com", []string{"friend@other.test"}
		msg := func(subject string, size int) io.Reader {
			return strings.NewReader(message(from, to[0], subject, strings.Repeat(strings.Repeat("z", 98)+"\r\n", size/100)))
		}
		c := submitClient(t, e.submission, from)
		defer c.Close()
		// Larger than half a journal segment: a segment of its own.
		requireTemporary(t, transact(c, from, to, msg("full-big", journalTestSegment*5/8)), "queue full, a large message")
		var acked []string
		refused := ""
		for i := 0; i < 100 && refused == ""; i++ {
			subject := fmt.Sprintf("full-%02d", i)
			if err := transact(c, from, to, msg(subject, 20<<10)); err != nil {
				requireTemporary(t, err, "queue full")
				refused = subject
				break
			}
			acked = append(acked, subject)
		}
		require.NotEmpty(t, refused, "%d messages accepted on a full disk, none refused", len(acked))
		t.Logf("%s: %d messages of 20 KiB accepted on the full disk (in room written before), then 4xx", st.name, len(acked))
		if !st.prealloc {
			assert.Empty(t, acked, "no room at all: the first message is refused")
		}
		// The session goes on after the 451: the client tries again on
		// the same connection once there is room, and is served at once.
		require.NoError(t, os.Remove(filler))
		require.NoError(t, transact(c, from, to, msg("full-retry", 20<<10)), "room again")
		require.NoError(t, transact(c, from, to, msg("full-big-retry", journalTestSegment*5/8)), "room again, a large message")
		acked = append(acked, "full-retry", "full-big-retry")
		require.NoError(t, c.Quit())

		// Every acknowledged message is deferred (none was lost), and is
		// delivered once the relayhost takes them; the refused ones never.
		e.waitCount("deferred", len(acked))
		e.sink.fail.Store(0)
		e.queueOK("requeue", "-all", "-queue", "deferred")
		subjects := func() map[string]int {
			got := map[string]int{}
			for _, m := range e.sink.received() {
				if i := bytes.Index(m.Data, []byte("\nSubject: ")); i >= 0 {
					subj, _, _ := strings.Cut(string(m.Data[i+len("\nSubject: "):]), "\r\n")
					got[subj]++
				}
			}
			return got
		}
		waitFor(t, 30*time.Second, "every acknowledged message at the relayhost", func() bool {
			got := subjects()
			for _, s := range acked {
				if got[s] == 0 {
					return false
				}
			}
			return true
		})
		counts := e.waitDrained(20 * time.Second)
		got := subjects()
		assert.Zero(t, got[refused], "a message refused with 451 must not be delivered")
		assert.Zero(t, got["full-big"], "a message refused with 451 must not be delivered")
		assert.Zero(t, counts["corrupt"])
		assert.Zero(t, counts["dead"])
		normalClient(t, e, "127.0.0.1", "after-queue-full")
	})

	if st.name != "spool" {
		return
	}
	t.Run("queue full, a free file left", func(t *testing.T) {
		require.Eventually(t, func() bool { return countFiles(filepath.Join(e.spool, "free")) > 0 },
			10*time.Second, 50*time.Millisecond, "a delivered message leaves its file in free/")
		filler := diskfull.Fill(t, queueFS)
		defer os.Remove(filler)
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
			message("someone@example.org", "jane@doe-family.com", "full-but-free", "fits in a recycled file")))
		require.Eventually(t, func() bool { return mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "full-but-free") },
			10*time.Second, 50*time.Millisecond)
	})
}

// submitClient opens a session on the submission port, after STARTTLS and
// AUTH as from.
func submitClient(t *testing.T, addr, from string) *gosmtp.Client {
	t.Helper()
	c, err := gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	require.NoError(t, c.Hello("laptop.example.net"))
	require.NoError(t, c.Auth(sasl.NewPlainClient("", from, password)))
	return c
}

// TestHardeningSpoolBroken: without mount permission a spool can still be
// broken as root: files where the queue expects the directories new
// entries are written in (tmp/, and free/ whose files it reuses). The
// enqueue fails, the client gets 451, and the server recovers when the
// directories are back.
func TestHardeningSpoolBroken(t *testing.T) {
	e := hardenEnv(t)
	normalClient(t, e, "127.0.0.1", "before-broken")
	for _, d := range []string{"tmp", "free"} {
		p := filepath.Join(e.spool, d)
		require.NoError(t, os.RemoveAll(p))
		require.NoError(t, os.WriteFile(p, []byte("not a directory"), 0o600))
	}
	err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
		message("someone@example.org", "jane@doe-family.com", "broken-spool", "x"))
	requireTemporary(t, err, "queue tmp/ and free/ are files")
	for _, d := range []string{"tmp", "free"} {
		p := filepath.Join(e.spool, d)
		require.NoError(t, os.Remove(p))
		require.NoError(t, os.Mkdir(p, 0o750))
	}
	normalClient(t, e, "127.0.0.1", "after-broken")
	assert.False(t, mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "broken-spool"))
}

// TestHardeningDNSFaults: doe-family checks SPF in soft mode, which
// documents (auth.SPFSoft) that only "fail" is refused: a DNS server that
// answers SERVFAIL or never answers gives temperror, recorded in
// Received-SPF, and the message is accepted. A DNS server that never
// answers must not hold a session past the SPF timeout (10 s) at MAIL, nor
// the greeting past the reverse-lookup bound (10 s).
func TestHardeningDNSFaults(t *testing.T) {
	e := hardenEnv(t)
	e.dns.Fail("servfail.test", mdns.RcodeServerFailure)
	e.dns.Timeout("slow.test")
	e.dns.Timeout("3.0.0.127.in-addr.arpa")
	jane := filepath.Join(e.maildir, "jane", "new")

	mailTimed := func(t *testing.T, ip, from, subject string) time.Duration {
		conn, err := dialFrom(ip, e.listen)
		require.NoError(t, err)
		c := gosmtp.NewClient(conn)
		c.CommandTimeout = 60 * time.Second // the server must answer well before this
		defer c.Close()
		start := time.Now()
		require.NoError(t, c.Hello("client.example.org"))
		greeted := time.Since(start)
		start = time.Now()
		require.NoError(t, c.Mail(from, nil), "soft mode accepts a temperror")
		mailTook := time.Since(start)
		require.NoError(t, c.Rcpt("jane@doe-family.com", nil))
		w, err := c.Data()
		require.NoError(t, err)
		_, err = io.WriteString(w, message(from, "jane@doe-family.com", subject, "dns trouble"))
		require.NoError(t, err)
		require.NoError(t, w.Close())
		require.NoError(t, c.Quit())
		t.Logf("%s: greeting+EHLO %v, MAIL %v", subject, greeted.Round(time.Millisecond), mailTook.Round(time.Millisecond))
		return greeted + mailTook
	}
	delivered := func(t *testing.T, subject string) string {
		var got string
		waitFor(t, 20*time.Second, "delivery of "+subject, func() bool {
			for _, f := range waitFiles(t, jane, 0) {
				if strings.Contains(f, "Subject: "+subject+"\n") {
					got = f
					return true
				}
			}
			return false
		})
		return got
	}

	t.Run("group", func(t *testing.T) {
		t.Run("SPF SERVFAIL", func(t *testing.T) {
			t.Parallel()
			took := mailTimed(t, "127.0.0.2", "someone@servfail.test", "dns-servfail")
			assert.Less(t, took, 15*time.Second)
			f := delivered(t, "dns-servfail")
			assert.Regexp(t, `(?m)^Received-SPF: temperror`, f)
		})
		t.Run("SPF timeout", func(t *testing.T) {
			skipShort(t)
			t.Parallel()
			took := mailTimed(t, "127.0.0.2", "someone@slow.test", "dns-timeout")
			// SPF gives up after 10 s; a hang would run into the 60 s
			// client timeout.
			assert.Less(t, took, 25*time.Second, "a DNS timeout held the session past the SPF timeout")
			f := delivered(t, "dns-timeout")
			assert.Regexp(t, `(?m)^Received-SPF: temperror`, f)
		})
		t.Run("reverse DNS timeout", func(t *testing.T) {
			skipShort(t)
			t.Parallel()
			took := mailTimed(t, "127.0.0.3", "someone@loopback.test", "dns-ptr-timeout")
			assert.Less(t, took, 25*time.Second, "a PTR timeout held the greeting past its bound")
			f := delivered(t, "dns-ptr-timeout")
			assert.Regexp(t, `(?m)^Received-SPF: pass`, f)
			assert.Contains(t, f, "(unknown [127.0.0.3])", "no reverse name when PTR times out")
		})
	})
	normalClient(t, e, "127.0.0.1", "after-dns")
}

// openIdle dials from ip and reads the first reply line.
func openIdle(ip, addr string) (net.Conn, string, error) {
	conn, err := dialFrom(ip, addr)
	if err != nil {
		return nil, "", err
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	return conn, strings.TrimRight(line, "\r\n"), nil
}

// openMany opens perIP connections from each address, 64 at a time, and
// returns the open ones and the first line each got.
func openMany(t *testing.T, addr string, ips []string, perIP int) (open []net.Conn, lines []string) {
	t.Helper()
	var mu sync.Mutex
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, ip := range ips {
		for range perIP {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, line, err := openIdle(ip, addr)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					lines = append(lines, "error: "+err.Error())
					return
				}
				lines = append(lines, line)
				if strings.HasPrefix(line, "220 ") {
					open = append(open, c)
				} else {
					c.Close()
				}
			}()
		}
	}
	wg.Wait()
	return open, lines
}

func ipRange(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("127.0.0.%d", i))
	}
	return out
}

// TestHardeningIdleConnections: 2,000 idle connections from 100 loopback
// addresses (20 each). doe-family runs on the smtp package's default limits
// (-max-connections 2000, 20 per IP): 2,000 from 100 addresses are held,
// the next gets 421 4.7.0. The server's RSS growth per idle
// connection is measured and reported; a normal client is served while
// they are open (below the total limit) and after they close.
func TestHardeningIdleConnections(t *testing.T) {
	skipShort(t)
	const (
		perIP    = 20 // smtp.DefaultLimits().MaxConnectionsPerIP
		maxTotal = 2000
	)
	raiseNoFile(t, 8192)
	e := hardenEnv(t, "-max-connections", fmt.Sprint(maxTotal))
	pid := e.cmd.Process.Pid
	normalClient(t, e, "127.0.0.250", "idle-warmup")
	runtimeSettle()
	rss0 := procBytes(t, pid, "VmRSS")

	var all []net.Conn
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()

	// 980 connections from 127.0.0.1-49: all greeted.
	openA, lines := openMany(t, e.listen, ipRange(1, 49), perIP)
	all = append(all, openA...)
	for _, l := range lines {
		require.True(t, strings.HasPrefix(l, "220 "), "below the limits every connection is greeted, got %q", l)
	}
	require.Len(t, openA, 49*perIP)
	runtimeSettle()
	rss1 := procBytes(t, pid, "VmRSS")
	perConn := float64(rss1-rss0) / float64(len(openA))
	t.Logf("idle connections: RSS %s before, %s with %d idle connections: %.0f bytes (%.1f KiB) per idle connection",
		mib(rss0), mib(rss1), len(openA), perConn, perConn/1024)
	// Issue 8 targets 20 KiB (a bare go-smtp server needs about 15.5); the
	// bound here only catches a gross regression (a big buffer or a stuck
	// goroutine per connection) without flaking on RSS noise.
	assert.Less(t, perConn, float64(64<<10), "bytes per idle connection")

	// The 21st connection from one address is refused.
	c, line, err := openIdle("127.0.0.1", e.listen)
	if err == nil {
		c.Close()
	}
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "421 4.7.0"), "connection %d from one IP: got %q", perIP+1, line)

	// A normal client is served while they are open.
	normalClient(t, e, "127.0.0.250", "idle-during")
	time.Sleep(500 * time.Millisecond) // let the server release its slot

	// The other 1,020 of the 2,000: they fill the total limit exactly.
	openB, lines := openMany(t, e.listen, ipRange(50, 100), perIP)
	all = append(all, openB...)
	runtimeSettle()
	rss2 := procBytes(t, pid, "VmRSS")
	held := len(openA) + len(openB)
	perConn2 := float64(rss2-rss0) / float64(held)
	t.Logf("idle connections: RSS %s with %d idle connections: %.0f bytes (%.1f KiB) per idle connection",
		mib(rss2), held, perConn2, perConn2/1024)
	assert.Less(t, perConn2, float64(64<<10), "bytes per idle connection")
	refused := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "421 4.7.0") {
			refused++
		} else {
			assert.True(t, strings.HasPrefix(l, "220 "), "got %q", l)
		}
	}
	t.Logf("idle connections: %d attempted from 100 addresses, %d held, %d refused with 421 4.7.0 (total limit %d)",
		49*perIP+51*perIP, len(openA)+len(openB), refused, maxTotal)
	assert.Equal(t, maxTotal, len(openA)+len(openB), "the total limit holds exactly %d", maxTotal)
	assert.Equal(t, 51*perIP-(maxTotal-len(openA)), refused)

	// At the limit a new client is refused too, with 421 4.7.0.
	err = sendFrom("127.0.0.250", e.listen, "someone@example.org", []string{"jane@doe-family.com"}, "x")
	require.Error(t, err)
	code, enh := smtpCode(t, err)
	assert.Equal(t, 421, code)
	assert.Equal(t, "4.7.0", enh)

	// Idle clients that go away free their slots.
	for _, c := range all {
		c.Close()
	}
	all = nil
	waitFor(t, 20*time.Second, "the server to serve again", func() bool {
		return sendFrom("127.0.0.250", e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
			message("someone@loopback.test", "jane@doe-family.com", "idle-after", "x")) == nil
	})
	normalClient(t, e, "127.0.0.1", "idle-after-2")
	t.Logf("idle connections: RSS %s after they closed", mib(procBytes(t, pid, "VmRSS")))
}

// lines is an endless body of 78-byte CRLF lines, none starting with a dot.
type lines struct {
	n   int
	buf []byte
}

func (l *lines) Read(p []byte) (int, error) {
	if len(l.buf) == 0 {
		l.buf = fmt.Appendf(l.buf[:0], "line %09d %s\r\n", l.n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+")
		l.n++
	}
	n := copy(p, l.buf)
	l.buf = l.buf[n:]
	return n, nil
}

func bigMessage(from string, to []string, subject string, size int64) io.Reader {
	hdr := "From: <" + from + ">\r\nTo: <" + strings.Join(to, ">, <") + ">\r\nSubject: " + subject +
		"\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject + "@test>\r\n\r\n"
	return io.MultiReader(strings.NewReader(hdr), io.LimitReader(&lines{}, size), strings.NewReader("\r\nend\r\n"))
}

// TestHardeningLargeMessage: a large message goes through the whole
// policy (submission with STARTTLS and AUTH, SPF skipped for the
// authenticated user, DKIM signing after queueing) to a local and a remote
// recipient while the server's peak RSS is measured: a whole message held in
// memory would show as growth of its size. doe-family has no flag for the
// size limit raised to 60 MiB (-max-message-size), so a 50 MiB message
// goes through; a 70 MiB one is read to its end and refused with 552 5.3.4,
// nothing queued, memory bounded as well. The 50 MiB message goes through
// each store (the journal writes a message over half a segment, 32 MiB,
// in a segment of its own); the refusal, before any store, runs once.
func TestHardeningLargeMessage(t *testing.T) {
	skipShort(t)
	forStores(t, hardeningLargeMessage)
}

func hardeningLargeMessage(t *testing.T, st storeKind) {
	const (
		accepted = 50 << 20
		tooBig   = 70 << 20
		bound    = 64 << 20 // far below a message held whole in memory
	)
	e := hardenEnv(t, append([]string{"-max-message-size", fmt.Sprint(60 << 20)}, st.args...)...)
	pid := e.cmd.Process.Pid
	jane := filepath.Join(e.maildir, "jane", "new")
	to := []string{"jane@doe-family.com", "friend@other.test"}
	from := "john@doe-family.com"

	// Warm up every path once (TLS, AUTH, signing, both transports).
	require.NoError(t, submit(e.submission, from, to, strings.NewReader(message(from, to[0], "warmup", "small"))))
	waitFor(t, 20*time.Second, "warm-up delivery", func() bool { return countFiles(jane) == 1 && len(e.sink.received()) == 1 })

	t.Run("50 MiB accepted, signed, delivered", func(t *testing.T) {
		m := startPeakMeter(t, pid)
		require.NoError(t, submit(e.submission, from, to, bigMessage(from, to, "big-50", accepted)))
		_, recvPeak, recvGrowth := m.sample()
		t.Logf("50 MiB message: peak RSS %s (growth %s) when its 250 came (received and queued)", mib(recvPeak), mib(recvGrowth))
		waitFor(t, 60*time.Second, "the large message in the maildir and at the relayhost", func() bool {
			return countFiles(jane) == 2 && len(e.sink.received()) == 2
		})
		base, peak, growth := m.finish()
		t.Logf("50 MiB message through submission+DKIM to maildir and relayhost: RSS %s before, peak %s, growth %s (exact peak: %v)",
			mib(base), mib(peak), mib(growth), m.reset)
		assert.Less(t, growth, int64(bound), "RSS grew by %s: is the message held in memory?", mib(growth))

		got := e.sink.received()[1]
		assert.Greater(t, len(got.Data), accepted)
		assert.Contains(t, string(got.Data), "Subject: big-50")
		verifications, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				return e.dns.Resolver().LookupTXT(context.Background(), domain)
			},
		})
		require.NoError(t, err)
		require.Len(t, verifications, 1)
		assert.NoError(t, verifications[0].Err, "the signature of the large message must verify")
		require.True(t, mailboxHas(t, jane, "big-50"))
	})

	if st.name != "spool" {
		return // refused while it is read, before any store: once is enough
	}
	t.Run("70 MiB refused with 552 5.3.4 after reading", func(t *testing.T) {
		m := startPeakMeter(t, pid)
		err := submit(e.submission, from, to, bigMessage(from, to, "big-70", tooBig))
		base, peak, growth := m.finish()
		t.Logf("70 MiB message (over the 60 MiB limit): RSS %s before, peak %s, growth %s", mib(base), mib(peak), mib(growth))
		require.Error(t, err)
		code, enh := smtpCode(t, err)
		assert.Equal(t, 552, code)
		assert.Equal(t, "5.3.4", enh)
		assert.Less(t, growth, int64(bound), "RSS grew by %s reading a refused message", mib(growth))

		// A normal client is served, and the refused message was not queued.
		normalClient(t, e, "127.0.0.1", "after-big")
		require.NoError(t, submit(e.submission, from, []string{"friend@other.test"}, strings.NewReader(message(from, "friend@other.test", "after-big-relay", "x"))))
		msgs := waitSink(t, e.sink, 3)
		assert.Len(t, msgs, 3)
		assert.Contains(t, string(msgs[2].Data), "Subject: after-big-relay")
		assert.False(t, mailboxHas(t, jane, "big-70"))
		// No file anywhere in the queue's directory (the spool's entries
		// of every queue and tmp/, the journal's segments) holds it.
		require.NoError(t, filepath.WalkDir(e.spool, func(path string, en fs.DirEntry, err error) error {
			if err != nil || en.IsDir() {
				return err
			}
			info, err := en.Info()
			if err != nil {
				return err
			}
			assert.Less(t, info.Size(), int64(tooBig), "the refused message is in the spool: %s", path)
			return nil
		}))
	})
}
