package queue

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const crashEnv = "MTAKIT_QUEUE_CRASH_CHILD"

// TestCrashChild is the child of TestCrashDurability: it enqueues messages
// from several goroutines and prints each acknowledged ID, until killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("child process of TestCrashDurability only")
	}
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	out := make(chan string, 64)
	for g := 0; g < 8; g++ {
		go func() {
			for i := 0; i < 100000; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				tx := newTx(id, "a@example.org", "b@example.com", "c@example.com")
				if err := sp.Enqueue(context.Background(), tx, newMessage(t, testMsg+strings.Repeat("x", 2000)+"\r\n")); err != nil {
					out <- "ERR " + err.Error()
					return
				}
				out <- "ACK " + id
			}
		}()
	}
	w := bufio.NewWriter(os.Stdout)
	for line := range out {
		fmt.Fprintln(w, line)
		w.Flush() // an ID is printed only after Enqueue returned
	}
}

// TestCrashDurability kills a process enqueueing messages with SIGKILL and
// checks that the spool it leaves holds every message it acknowledged, all
// delivered after a restart.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	acked := map[string]bool{}
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(20 * time.Second)
	for sc.Scan() {
		line := sc.Text()
		if id, ok := strings.CutPrefix(line, "ACK "); ok {
			acked[id] = true
		} else if strings.HasPrefix(line, "ERR") {
			t.Fatalf("child: %s", line)
		}
		if len(acked) >= 300 || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	// Read what the child printed before it died: those were acknowledged too.
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			acked[id] = true
		}
	}
	cmd.Wait()
	require.NotEmpty(t, acked, "the child acknowledged nothing")
	t.Logf("child acknowledged %d messages before SIGKILL", len(acked))

	// Reopen the same spool: every acknowledged message is there, intact.
	h := newHarness(t, dir, Config{})
	l, err := h.sp.List(Working)
	require.NoError(t, err)
	inSpool := map[string]bool{}
	for _, e := range l {
		require.NoError(t, e.Err)
		inSpool[e.ID] = true
	}
	missing := 0
	for id := range acked {
		if !inSpool[id] {
			missing++
		}
	}
	assert.Zero(t, missing, "acknowledged messages missing after the crash")
	assert.GreaterOrEqual(t, len(inSpool), len(acked))

	// And the scheduler delivers all of them.
	h.start()
	h.waitN(len(inSpool))
	got := map[string]int{}
	for _, d := range h.tr.deliveries() {
		got[d.ID]++
		require.Contains(t, string(d.Data), strings.Repeat("x", 2000))
	}
	for id := range acked {
		assert.Equal(t, 2, got[id], "%s delivered to both recipients", id)
	}
	c, err := h.sp.List(Corrupt)
	require.NoError(t, err)
	assert.Empty(t, c)
}
