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
	mixed := os.Getenv(crashEnv+"_MIXED") != ""
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(line string) { // written out before it returns
		mu.Lock()
		fmt.Fprintln(w, line)
		w.Flush()
		mu.Unlock()
	}
	for g := range 8 {
		go func() {
			for i := range 100000 {
				id := fmt.Sprintf("g%d-%d", g, i)
				raw := testMsg + strings.Repeat("x", 2000) + "\r\n"
				m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err := s.Enqueue(context.Background(), newTx(id, "b@example.com", "c@example.com"), m); err != nil {
					say("ERR " + err.Error())
					return
				}
				say("ACK " + id) // only after Enqueue returned
				if !mixed || i%4 == 0 {
					continue
				}
				// Most messages go on: an attempt record, then removed
				// (delivered), so that compaction copies, deletes and
				// reuses segments while the process is killed.
				q, env, m2, err := s.Load(id)
				if err == nil {
					env.InFlight = true
					err = s.SaveUnsynced(context.Background(), env, q, queue.Deliver, nil)
					m2.Close()
				}
				if err == nil && i%4 != 1 {
					say("DEL " + id) // before: a kill may come during Remove
					err = s.Remove(context.Background(), queue.Deliver, id)
				}
				if err != nil {
					say("ERR " + err.Error())
					return
				}
			}
		}()
	}
	select {} // until killed
}

// TestCrashDurability kills a process enqueueing messages with SIGKILL and
// checks that the journal it leaves holds every message it acknowledged,
// all delivered by a scheduler after a restart. Mixed: the child also
// records attempts and removes most messages, so that compaction runs
// (copies, deletions, reused files) when it is killed; every message
// acknowledged and not removed must be there.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	t.Run("enqueue", func(t *testing.T) { crashDurability(t, false) })
	t.Run("mixed", func(t *testing.T) { crashDurability(t, true) })
}

func crashDurability(t *testing.T, mixed bool) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	if mixed {
		cmd.Env = append(cmd.Env, crashEnv+"_MIXED=1")
	}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) // also after a failure
	acked := map[string]bool{}
	removed := map[string]bool{}
	want := 400
	if mixed {
		want = 3000 // several segments written, compacted and reused
	}
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(20 * time.Second)
	read := func(line string) {
		if id, ok := strings.CutPrefix(line, "ACK "); ok {
			acked[id] = true
		} else if id, ok := strings.CutPrefix(line, "DEL "); ok {
			removed[id] = true
		} else if strings.HasPrefix(line, "ERR") {
			t.Fatalf("child: %s", line)
		}
	}
	for sc.Scan() {
		read(sc.Text())
		if len(acked) >= want || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	for sc.Scan() { // printed before it died: acknowledged too
		if line := sc.Text(); !strings.HasPrefix(line, "ERR") {
			read(line)
		}
	}
	// A message the child was removing (DEL is printed before Remove) may
	// be there or not: the removal may not have been made, and it need not
	// survive a crash.
	for id := range removed {
		delete(acked, id)
	}
	cmd.Wait()
	require.NotEmpty(t, acked, "the child acknowledged nothing")
	t.Logf("child acknowledged %d messages before SIGKILL; %d segment files", len(acked), len(segFiles(t, dir)))

	s := openT(t, dir, crashSegSize)
	in := map[string]bool{}
	var ids []string
	for _, q := range []string{queue.Working, queue.Deliver} {
		l, err := s.IDs(q)
		require.NoError(t, err)
		ids = append(ids, l...)
	}
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
	t.Logf("%d acknowledged and not removed, %d removed; %d in the journal", len(acked), len(removed), len(ids))

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
