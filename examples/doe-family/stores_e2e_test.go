package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue/admin"
)

// storeKind is a queue store doe-family runs on. The tests that prove a
// guarantee of the store (an acknowledged message survives kill -9, a
// full disk gives 4xx and loses nothing, a restart resumes the queue) run
// on each (forStores); they look at the queue through the queue command
// (e.counts), never at one store's files.
type storeKind struct {
	name string
	args []string // the doe-family flags that select it
	// reusable is a glob, under -spool, of the files the store keeps
	// for reuse: room it owns on a full disk.
	reusable string
	// prealloc: the store writes its room before use (the journal's
	// segments), so a full disk still takes messages until it is used.
	prealloc bool
}

var storeKinds = []storeKind{
	{name: "spool", reusable: "free/*"},
	{name: "journal", args: []string{"-queue", "journal"}, reusable: "*.free", prealloc: true},
}

// forStores runs fn as a subtest on each store.
func forStores(t *testing.T, fn func(t *testing.T, st storeKind)) {
	for _, st := range storeKinds {
		t.Run(st.name, func(t *testing.T) { fn(t, st) })
	}
}

// counts returns the message count of each queue, from the running
// server's admin socket ("doe-family queue count"), quietly (it is
// polled).
func (e *env) counts() map[string]int {
	e.t.Helper()
	cmd := exec.Command(binary, "queue", "count", "-json", "-spool", e.spool, "-data", filepath.Join(e.dir, "data"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(e.t, cmd.Run(), "queue count: %s", stderr.String())
	require.NotContains(e.t, stderr.String(), "working on the spool", "the running server answers")
	var c admin.Counts
	require.NoError(e.t, json.Unmarshal(stdout.Bytes(), &c))
	return c.Queues
}

// waitDrained waits until nothing is left to deliver (working, deliver
// and deferred are empty) and returns the counts.
func (e *env) waitDrained(d time.Duration) map[string]int {
	e.t.Helper()
	var c map[string]int
	waitFor(e.t, d, "the queue to drain", func() bool {
		c = e.counts()
		return c["working"]+c["deliver"]+c["deferred"] == 0
	})
	return c
}
