package queue

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

const resumeEnv = "MTAKIT_QUEUE_RESUME_CHILD"

// TestResumeChild is the child of the crash-resume tests: on the spool of
// $MTAKIT_QUEUE_RESUME_CHILD it enqueues m1 (unless it is there already),
// runs a scheduler (on the fake clock, which starts at the same time in
// every process) whose transport prints "INFLIGHT <id>" and hangs, and
// waits to be killed.
func TestResumeChild(t *testing.T) {
	dir := os.Getenv(resumeEnv)
	if dir == "" {
		t.Skip("child process of the crash-resume tests only")
	}
	hang := TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		fmt.Printf("INFLIGHT %s\n", d.Tx.ID)
		select {} // until killed
	})
	h := newHarness(t, dir, Config{Transports: map[string]Transport{"fake": hang}})
	if h.queueOf("m1") == "" {
		h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	}
	h.start()
	select {}
}

// crashDuringAttempt runs TestResumeChild on the spool in dir and kills it
// with SIGKILL while its delivery attempt of m1 is under way.
func crashDuringAttempt(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestResumeChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), resumeEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer cmd.Wait()
	bound := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer bound.Stop()
	sc := bufio.NewScanner(stdout)
	inFlight := false
	for !inFlight && sc.Scan() {
		inFlight = sc.Text() == "INFLIGHT m1"
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	require.True(t, inFlight, "the child never started its attempt")
}

// TestResumeInterruptedAttempt: after a kill -9 during a delivery attempt,
// the restarted scheduler makes the attempt again at once, without waiting
// for the backoff that the attempt record set (5 minutes), and says why.
func TestResumeInterruptedAttempt(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	crashDuringAttempt(t, dir)

	var logs lockedBuffer
	h := newHarness(t, dir, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	env := h.envelope("m1")
	require.Equal(t, Deliver, h.queueOf("m1"))
	assert.True(t, env.InFlight, "the attempt record says an attempt is under way")
	assert.Equal(t, 1, env.Attempts)
	assert.Equal(t, h.clock.Now().Add(5*time.Minute), env.NextAttempt)

	h.start()
	h.wait("m1") // the clock has not moved
	assert.Equal(t, []string{"b@example.com"}, rcptsOf(h.tr.deliveries()), "tried again at once")
	assert.Empty(t, h.queueOf("m1"), "delivered")
	assert.Contains(t, logs.String(), "delivery attempt 1 of message m1 did not finish: the process stopped during it; trying again now")
}

// TestCrashLoopBacksOff: a message during whose delivery the process dies
// every time is tried again at once after the first and second crashes;
// after the third it waits for its backoff, with a warning that says why.
// An attempt that finishes resets the count.
func TestCrashLoopBacksOff(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	for range maxCrashes {
		crashDuringAttempt(t, dir)
	}
	var logs lockedBuffer
	h := newHarness(t, dir, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	env := h.envelope("m1")
	require.True(t, env.InFlight)
	assert.Equal(t, maxCrashes, env.Attempts, "each restart tried again at once")
	assert.Equal(t, maxCrashes-1, env.Crashes, "the first two crashes are counted")
	t0 := h.clock.Now()
	// Attempts at t0 (three times): the third set the next one at +20 min.
	require.Equal(t, t0.Add(20*time.Minute), env.NextAttempt)

	h.tr.script = func(string, int) policy.Reply { return reply(451, "4.3.0", "later") }
	h.start()
	h.wait("m1")
	assert.Zero(t, h.tr.callCount(), "no attempt before the backoff")
	env = h.envelope("m1")
	assert.False(t, env.InFlight)
	assert.Equal(t, maxCrashes, env.Crashes, "the third crash is recorded")
	assert.Contains(t, logs.String(), "level=WARN")
	assert.Contains(t, logs.String(), "delivery attempt 3 of message m1 did not finish: the process stopped during it; backing off")

	h.setClock(t0.Add(20 * time.Minute))
	h.wait("m1")
	assert.Equal(t, 1, h.tr.callCount(), "tried once the backoff is over")
	env = h.envelope("m1")
	assert.Equal(t, Deferred, h.queueOf("m1"))
	assert.False(t, env.InFlight)
	assert.Zero(t, env.Crashes, "an attempt that finished resets the count")
	assert.Equal(t, maxCrashes+1, env.Attempts)
}

// TestStopIsNotACrash: stopping the scheduler during an attempt cuts the
// attempt short and records its outcome: no attempt is left in flight.
func TestStopIsNotACrash(t *testing.T) {
	started := make(chan struct{}, 1)
	tr := TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		started <- struct{}{}
		<-ctx.Done()
		return []policy.Reply{reply(451, "4.4.2", "cut short")}
	})
	h := newHarness(t, "", Config{Transports: map[string]Transport{"fake": tr}})
	h.start()
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	<-started
	assert.True(t, h.envelope("m1").InFlight, "recorded before the attempt")
	h.stop()
	env := h.envelope("m1")
	assert.Equal(t, Deferred, h.queueOf("m1"))
	assert.False(t, env.InFlight)
	assert.Zero(t, env.Crashes)
}

// TestRequeueClearsCrashes: an operator's Requeue starts the count afresh.
func TestRequeueClearsCrashes(t *testing.T) {
	h := newHarness(t, "", Config{})
	h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
	env := h.envelope("m1")
	env.InFlight, env.Crashes, env.Attempts, env.PostQDone = true, 5, 5, true
	require.NoError(t, h.sp.update(context.Background(), env, Working, Deferred, true))
	require.NoError(t, h.sp.Requeue(context.Background(), "m1"))
	env = h.envelope("m1")
	assert.False(t, env.InFlight)
	assert.Zero(t, env.Crashes)
	assert.True(t, strings.HasPrefix(h.queueOf("m1"), Deliver))
}
