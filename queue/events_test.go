package queue

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// eventLog is an Events that records each event.
type eventLog struct {
	mu      sync.Mutex
	events  []string
	commits []int
}

func (e *eventLog) DeliveryAttempted(transport string, r policy.Reply, since time.Duration) {
	e.add(fmt.Sprintf("attempt %s %d %v", transport, r.Code, since))
}
func (e *eventLog) DSNQueued(action string) { e.add("dsn " + action) }
func (e *eventLog) SpoolCommitted(ops int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.commits = append(e.commits, ops)
}

func (e *eventLog) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, s)
}

func (e *eventLog) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.events
	e.events = nil
	return out
}

func TestEventsScheduler(t *testing.T) {
	ev := &eventLog{}
	h := newHarness(t, "", Config{Events: ev, DelayWarning: -1})
	h.tr.script = func(rcpt string, _ int) policy.Reply {
		switch rcpt {
		case "later@example.com":
			return policy.Reply{Code: 451, Enhanced: "4.3.0", Text: "later"}
		case "bad@example.com":
			return policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
		}
		return policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	}
	h.enqueue(newTx("00000000000000000001", "a@example.org", "ok@example.com", "later@example.com", "bad@example.com"), testMsg)
	h.clock.Advance(90 * time.Second) // the attempt comes 90 s after the arrival
	h.start()
	h.wait("00000000000000000001")
	dsn := h.waitOther("00000000000000000001") // the DSN, delivered at once (concurrently)
	assert.ElementsMatch(t, []string{
		"attempt fake 250 1m30s", "attempt fake 451 1m30s", "attempt fake 550 1m30s",
		"dsn failed", "attempt fake 250 0s",
	}, ev.take())
	assert.Equal(t, Deferred, h.queueOf("00000000000000000001"))
	assert.Equal(t, "", h.queueOf(dsn), "delivered and removed")

	// The retry, one more minute later: the delay counts from the arrival.
	h.setClock(h.envelope("00000000000000000001").NextAttempt.Add(time.Minute))
	h.wait("00000000000000000001")
	assert.Equal(t, []string{"attempt fake 451 " + (h.clock.Now().Sub(h.envelope("00000000000000000001").Received)).String()}, ev.take())
}

// TestEventsSpoolCommits: every enqueue is counted in exactly one commit
// round, however they were grouped; with UnsafeNoSync there are no rounds.
func TestEventsSpoolCommits(t *testing.T) {
	ev := &eventLog{}
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger(), Events: ev})
	require.NoError(t, err)
	defer sp.Close()
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tx := newTx(fmt.Sprintf("%020d", i+1), "a@example.org", "b@example.com")
			assert.NoError(t, sp.Enqueue(context.Background(), tx, newMessage(t, testMsg)))
		})
	}
	wg.Wait()
	ev.mu.Lock()
	commits := append([]int(nil), ev.commits...)
	ev.commits = nil
	ev.mu.Unlock()
	sum := 0
	for _, c := range commits {
		assert.Positive(t, c)
		sum += c
	}
	assert.Equal(t, n, sum, "rounds %v", commits)
	t.Logf("%d enqueues in %d rounds", n, len(commits))

	// A record of the scheduler (a durable Save) is one more.
	_, env, m, err := sp.Load(fmt.Sprintf("%020d", 1))
	require.NoError(t, err)
	m.Close()
	require.NoError(t, sp.Save(context.Background(), env, Working, Deliver, nil))
	ev.mu.Lock()
	assert.Equal(t, []int{1}, ev.commits)
	ev.mu.Unlock()

	ev2 := &eventLog{}
	sp2, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger(), Events: ev2, UnsafeNoSync: true})
	require.NoError(t, err)
	defer sp2.Close()
	require.NoError(t, sp2.Enqueue(context.Background(), newTx(fmt.Sprintf("%020d", 1), "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	assert.Empty(t, ev2.commits)
}
