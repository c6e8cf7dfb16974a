package jetstream

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue/queuetest"
)

// freePort returns a free TCP port on loopback.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// cluster starts a 3-node JetStream cluster in this process (sync always).
func cluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var srvs []*server.Server
	for i, p := range ports {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			SyncAlways: true,
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "mtaq", Host: "127.0.0.1", Port: p},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		srv, err := server.NewServer(opts)
		require.NoError(t, err)
		srv.Start()
		require.True(t, srv.ReadyForConnections(30*time.Second))
		srvs = append(srvs, srv)
		t.Cleanup(func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		})
	}
	return srvs
}

// TestClusterQuorum: on a 3-node cluster with R3 streams, Enqueue works
// with one node down and fails (in Config.Timeout, so the SMTP server
// answers 451 4.3.0) with two down: no quorum, never a success.
func TestClusterQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes a few seconds")
	}
	srvs := cluster(t)
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	// The cluster elects its meta leader; Open retries until it can
	// create the R3 stream.
	var st *Store
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		st, err = Open(ctx, Config{URL: strings.Join(urls, ","), Replicas: 3, Timeout: 3 * time.Second, Logger: quiet()})
		return err == nil
	}, 60*time.Second, 200*time.Millisecond)
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	require.NoError(t, st.Enqueue(ctx, queuetest.NewTx("q1", "a@example.org", "b@example.com"), newMessage(t)))

	// One node down: a quorum (2 of 3) remains.
	srvs[2].Shutdown()
	srvs[2].WaitForShutdown()
	require.Eventually(t, func() bool {
		return st.Enqueue(ctx, queuetest.NewTx("", "a@example.org", "b@example.com"), newMessage(t)) == nil
	}, 30*time.Second, 100*time.Millisecond, "enqueue with one node of three down")
	_, env, m, err := st.Load("q1")
	require.NoError(t, err, "the message accepted before is still there")
	m.Close()
	assert.Equal(t, "q1", env.ID)

	// Two nodes down: no quorum, every Enqueue fails.
	srvs[1].Shutdown()
	srvs[1].WaitForShutdown()
	for i := range 3 {
		start := time.Now()
		err := st.Enqueue(ctx, queuetest.NewTx(fmt.Sprintf("nq%d", i), "a@example.org", "b@example.com"), newMessage(t))
		assert.Error(t, err, "no quorum: never a success")
		assert.Less(t, time.Since(start), 15*time.Second)
	}
}
