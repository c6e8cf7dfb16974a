package main

import (
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runNATS starts a single-node JetStream server in the test process, on
// loopback, for doe-family processes to share with -queue.
func runNATS(t *testing.T) string {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		SyncAlways: true, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(10*time.Second), "nats-server did not start")
	t.Cleanup(s.Shutdown)
	return strings.TrimPrefix(s.ClientURL(), "nats://")
}

// TestClusterSharedState: two doe-family nodes on one JetStream share a
// client's connection allowance and greylisting triplets.
func TestClusterSharedState(t *testing.T) {
	addr := runNATS(t)
	nodes := make([]*env, 2)
	for i, name := range []string{"a", "b"} {
		nodes[i] = abuseEnv(t, "-queue", "nats://"+addr, "-nats-replicas", "1", "-node", name,
			"-rate-limit", "conns=4/m", "-greylist", "-greylist-delay", "2s")
	}

	t.Run("connections per minute, counted by both nodes", func(t *testing.T) {
		for i := range 4 {
			assert.True(t, strings.HasPrefix(greeting(t, "127.0.0.6", nodes[i%2].listen), "220 "), "connection %d", i+1)
		}
		for _, n := range nodes {
			assert.Equal(t, "421 4.7.1 Error: too many connections from [127.0.0.6]", greeting(t, "127.0.0.6", n.listen))
		}
		assert.True(t, strings.HasPrefix(greeting(t, "127.0.0.7", nodes[1].listen), "220 "), "another client has its own")
	})

	t.Run("greylisting triplet seen by one node, passed by the other", func(t *testing.T) {
		send := func(n *env) error {
			return sendFrom("127.0.0.8", n.listen, "someone@nospf.test", []string{"jane@doe-family.com"},
				message("someone@nospf.test", "jane@doe-family.com", "shared-greylist", "x"))
		}
		first := time.Now()
		err := send(nodes[0])
		assert.Contains(t, replyOf(t, err), "451 4.7.1 <jane@doe-family.com>: Recipient address rejected: Greylisted")
		// Node b has never seen the triplet: on its own it would greylist
		// it now. The greylisting delay is what this waits for.
		<-time.After(time.Until(first.Add(2*time.Second + 100*time.Millisecond)))
		require.NoError(t, send(nodes[1]), "node b knows when node a first saw the triplet")
	})
}
