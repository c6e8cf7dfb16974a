package queue

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mtakit/mtakit/internal/diskfull"
	"github.com/mtakit/mtakit/policy"
)

// TestSpoolRemoveOnFullDisk: the spool's removal of a delivered message
// needs no room (an unlink, or a rename into free/ that falls back to an
// unlink): a message delivered while the disk is full is removed at once,
// with no removal left pending. (The journal, which appends a done record,
// keeps room for it: see queue/journal's disk-full tests.)
func TestSpoolRemoveOnFullDisk(t *testing.T) {
	dir := diskfull.Tmpfs(t, "1m")
	h := newHarness(t, dir, Config{})
	started, gate := make(chan struct{}, 1), make(chan struct{})
	var n int
	h.sch.cfg.Transports["fake"] = TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		n++
		started <- struct{}{}
		<-gate
		return []policy.Reply{{Code: 250, Enhanced: "2.0.0", Text: "OK"}}
	})
	h.start()
	h.enqueue(newTx("full1", "a@example.org", "b@example.com"), "Subject: x\r\n\r\nbody\r\n")
	select {
	case <-started: // its attempt record is written
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
	filler := diskfull.Fill(t, dir)
	defer os.Remove(filler)
	close(gate)
	h.wait("full1")
	assert.Empty(t, h.queueOf("full1"), "removed on the full disk")
	assert.False(t, h.sch.removalPending("full1"))
	assert.Equal(t, 1, n)
}
