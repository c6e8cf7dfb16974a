package main

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue/jetstream/kv"
)

// integration skips a long test with real processes (a NATS cluster)
// unless MTAKIT_INTEGRATION=1 (CI) or MTAKIT_CLUSTER=1 (only these) asks
// for it.
func integration(t *testing.T) {
	t.Helper()
	if os.Getenv("MTAKIT_INTEGRATION") != "1" && os.Getenv("MTAKIT_CLUSTER") != "1" {
		t.Skip("a NATS cluster of real processes: set MTAKIT_INTEGRATION=1 (or MTAKIT_CLUSTER=1) to run it")
	}
}

// TestNATSClusterQuorum checks the cluster harness and what the shared
// state does in it: an R3 bucket takes writes with one node of three
// killed, refuses them within the timeout with two killed (no quorum),
// and takes them again when one comes back.
func TestNATSClusterQuorum(t *testing.T) {
	integration(t)
	c := startNATSCluster(t, 3)
	_, js := c.connect()
	ctx := context.Background()
	st, err := kv.Open(ctx, js, kv.Config{Bucket: "quorum", Replicas: 3, Timeout: 2 * time.Second})
	require.NoError(t, err)
	n := 0
	incr := func() error {
		_, err := st.Update(ctx, "k", func(old []byte) ([]byte, error) {
			return []byte(strconv.Itoa(n + 1)), nil
		})
		if err == nil {
			n++
		}
		return err
	}
	// A new R3 bucket answers once its stream has elected a leader
	// ("no responders" until then).
	waitFor(t, 30*time.Second, "the first write", func() bool { return incr() == nil })
	c.kill(0)
	waitFor(t, 30*time.Second, "a write with one node down", func() bool { return incr() == nil })
	c.kill(1)
	start := time.Now()
	assert.Error(t, incr(), "no quorum: no write")
	assert.Less(t, time.Since(start), 5*time.Second)
	c.start(1)
	waitFor(t, 60*time.Second, "a write with quorum back", func() bool { return incr() == nil })
}
