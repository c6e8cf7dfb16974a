package journal

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

const crashEnv = "MTAKIT_JOURNAL_CRASH_CHILD"

// crashSegSize is small, so that the child fills several segments.
const crashSegSize = 256 << 10

// TestCrashChild is the child of TestCrashDurability: it enqueues messages
// from 8 goroutines and prints each acknowledged ID, until killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("child process of TestCrashDurability only")
	}
	s, err := Open(context.Background(), Config{Dir: dir, SegmentSize: crashSegSize, Logger: quietLogger()})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	out := make(chan string, 64)
	for g := range 8 {
		go func() {
			for i := range 100000 {
				id := fmt.Sprintf("g%d-%d", g, i)
				raw := testMsg + strings.Repeat("x", 2000) + "\r\n"
				m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err := s.Enqueue(context.Background(), newTx(id, "b@example.com", "c@example.com"), m); err != nil {
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
// checks that the journal it leaves holds every message it acknowledged,
// all delivered by a scheduler after a restart.
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
		if len(acked) >= 400 || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	for sc.Scan() { // printed before it died: acknowledged too
		if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			acked[id] = true
		}
	}
	cmd.Wait()
	require.NotEmpty(t, acked, "the child acknowledged nothing")
	t.Logf("child acknowledged %d messages before SIGKILL; %d segment files", len(acked), len(segFiles(t, dir)))

	s := openT(t, dir, crashSegSize)
	ids, err := s.IDs(queue.Working)
	require.NoError(t, err)
	in := map[string]bool{}
	for _, id := range ids {
		in[id] = true
	}
	missing := 0
	for id := range acked {
		if !in[id] {
			missing++
		}
	}
	assert.Zero(t, missing, "acknowledged messages missing after the crash")

	// The scheduler delivers every one to both recipients.
	tr := &countTransport{got: map[string]int{}, all: make(chan struct{})}
	tr.want = 2 * len(ids)
	sch := queue.NewScheduler(s, queue.Config{
		Transports:   map[string]queue.Transport{"t": tr},
		DefaultRoute: policy.Route{Transport: "t"},
		Logger:       quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sch.Run(ctx) }()
	select {
	case <-tr.all:
	case <-time.After(60 * time.Second):
		t.Fatal("not every message delivered")
	}
	cancel()
	<-done
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for id := range acked {
		assert.Equal(t, 2, tr.got[id], "%s delivered to both recipients", id)
	}
	assert.Zero(t, tr.bad, "deliveries with a damaged body")
	c, err := s.IDs(queue.Corrupt)
	require.NoError(t, err)
	assert.Empty(t, c)
}

// countTransport accepts everything and counts deliveries per ID.
type countTransport struct {
	mu   sync.Mutex
	got  map[string]int
	n    int
	want int
	bad  int
	all  chan struct{}
}

func (c *countTransport) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	var b strings.Builder
	d.Message.WriteTo(&b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !strings.Contains(b.String(), strings.Repeat("x", 2000)) {
		c.bad++
	}
	out := make([]policy.Reply, len(d.Rcpts))
	for i := range out {
		out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
		c.got[d.Tx.ID]++
		c.n++
	}
	if c.n == c.want {
		close(c.all)
	}
	return out
}
