package queue

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestAdmitInFlow: while more messages are due than InFlowLimit and wait
// for a worker, Admit waits until a worker takes one, or InFlowDelay
// passes, or its context ends; it does not wait below the limit, nor
// while Run does not run.
func TestAdmitInFlow(t *testing.T) {
	sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	release := make(chan struct{})
	started := make(chan string, 10)
	tr := TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		started <- d.Tx.ID
		select {
		case <-release:
		case <-ctx.Done():
		}
		return []policy.Reply{{Code: 250, Enhanced: "2.0.0", Text: "ok"}}
	})
	sch := NewScheduler(sp, Config{Workers: 1, InFlowLimit: 2, InFlowDelay: time.Hour,
		Transports: map[string]Transport{"t": tr}, DefaultRoute: policy.Route{Transport: "t"}, Logger: quietLogger()})
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	enqueue := func(id string) {
		require.NoError(t, sp.Enqueue(ctx, newTx(id, "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	}
	for i := range 4 {
		enqueue(fmt.Sprintf("a%d", i))
	}
	require.NoError(t, sch.Admit(cancelled), "Run not running: no wait")

	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- sch.Run(runCtx) }()
	defer func() {
		stop()
		<-stopped
	}()
	first := <-started // the one worker busy, three waiting: over the limit
	waiting := func() bool {
		sch.mu.Lock()
		defer sch.mu.Unlock()
		return sch.room != nil
	}
	admitted := make(chan error, 1)
	go func() { admitted <- sch.Admit(ctx) }()
	require.Eventually(t, waiting, 10*time.Second, time.Millisecond, "Admit waits over the limit")
	assert.ErrorIs(t, sch.Admit(cancelled), context.Canceled, "a context that ends stops the wait")

	release <- struct{}{} // the first delivered: the worker takes the next, two wait
	require.NoError(t, <-admitted)
	second := <-started
	assert.NotEqual(t, first, second)
	assert.False(t, waiting())

	// Over the limit again, nobody delivers: InFlowDelay ends the wait.
	enqueue("a4")
	require.Eventually(t, func() bool {
		sch.mu.Lock()
		defer sch.mu.Unlock()
		return len(sch.ready) > 2
	}, 10*time.Second, time.Millisecond)
	sch.cfg.InFlowDelay = time.Millisecond
	require.NoError(t, sch.Admit(ctx))
	assert.True(t, waiting(), "let in by the delay, the backlog still over the limit")

	for range 4 { // the rest delivered: below the limit, no wait at all
		release <- struct{}{}
	}
	require.Eventually(t, func() bool { ids, _ := sp.IDs(Deliver); w, _ := sp.IDs(Working); return len(ids)+len(w) == 0 },
		10*time.Second, time.Millisecond)
	require.NoError(t, sch.Admit(cancelled), "below the limit: no wait")
}
