package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// A NATS cluster of real nats-server processes on loopback, for the fault
// tests: nodes are killed with SIGKILL and started again on their data.

// natsBinary builds nats-server from the module's own nats-server/v2
// (the version go.mod pins, the one the tests embed) once per test binary.
var natsBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "nats-server-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building nats-server: %v\n%s", err, out)
	}
	return bin, nil
})

type natsNode struct {
	name, dir, client, route string
	cmd                      *exec.Cmd
	exited                   chan struct{}
	log                      *lockedBuffer
}

type natsCluster struct {
	t     *testing.T
	bin   string
	nodes []*natsNode
}

// startNATSCluster starts n nats-server processes in one cluster, each
// with JetStream syncing every write (sync_interval: always), and waits
// until JetStream has a meta leader.
func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	bin, err := natsBinary()
	require.NoError(t, err)
	c := &natsCluster{t: t, bin: bin}
	for i := range n {
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("nats%d", i+1), dir: t.TempDir(), client: freePort(t), route: freePort(t)})
	}
	for _, nd := range c.nodes {
		var routes []string
		for _, o := range c.nodes {
			if o != nd {
				routes = append(routes, `"nats-route://`+o.route+`"`)
			}
		}
		conf := fmt.Sprintf(`server_name: %s
listen: %q
jetstream {
  store_dir: %q
  sync_interval: always
}
cluster {
  name: mtakit
  listen: %q
  routes: [%s]
}
`, nd.name, nd.client, filepath.Join(nd.dir, "js"), nd.route, strings.Join(routes, ", "))
		require.NoError(t, os.WriteFile(filepath.Join(nd.dir, "nats.conf"), []byte(conf), 0o600))
	}
	for i := range c.nodes {
		c.start(i)
	}
	// Forming the cluster (routes, a meta leader knowing every peer) took
	// more than 60 s once in CI, with other test packages sharing the
	// two cores: the tests are about what happens after.
	c.waitJetStream(3 * time.Minute)
	return c
}

// start runs node i (again) on its configuration and data.
func (c *natsCluster) start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	nd.log = &lockedBuffer{}
	cmd := exec.Command(c.bin, "-c", filepath.Join(nd.dir, "nats.conf"))
	cmd.Stdout, cmd.Stderr = nd.log, nd.log
	require.NoError(c.t, cmd.Start())
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	nd.cmd, nd.exited = cmd, exited
	c.t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	waitFor(c.t, 20*time.Second, nd.name+" listening", func() bool { return strings.Contains(nd.log.String(), "Server is ready") })
}

// kill ends node i with SIGKILL, as a machine's loss would.
func (c *natsCluster) kill(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	require.NoError(c.t, nd.cmd.Process.Signal(syscall.SIGKILL))
	<-nd.exited
}

// url is the -queue value naming every node.
func (c *natsCluster) url() string {
	var hps []string
	for _, nd := range c.nodes {
		hps = append(hps, nd.client)
	}
	return "nats://" + strings.Join(hps, ",")
}

// connect is a client of the cluster.
func (c *natsCluster) connect() (*nats.Conn, jetstream.JetStream) {
	c.t.Helper()
	var urls []string
	for _, nd := range c.nodes {
		urls = append(urls, "nats://"+nd.client)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	require.NoError(c.t, err)
	c.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(c.t, err)
	return nc, js
}

// waitJetStream waits until the cluster can place a stream on every
// node (a meta leader is elected and knows all its peers): until then a
// stream of len(nodes) replicas is refused with "no suitable peers".
func (c *natsCluster) waitJetStream(d time.Duration) {
	c.t.Helper()
	_, js := c.connect()
	waitFor(c.t, d, "JetStream with every peer", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "harness_probe", Subjects: []string{"harness.probe"},
			Replicas: len(c.nodes), Storage: jetstream.MemoryStorage}); err != nil {
			return false
		}
		return js.DeleteStream(ctx, "harness_probe") == nil
	})
}
