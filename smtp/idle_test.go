package smtp

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleConnections opens 2,000 idle connections from one IP: the
// per-IP limit lets 20 in and refuses the rest with 421; then, with the
// limits raised, it measures the server's heap per idle connection (logged;
// a loose bound guards against a gross regression).
func TestIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 4,000 sockets")
	}
	const n = 2000
	open := func(addr string, n int) (conns []net.Conn, greeted, refused int) {
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			require.NoError(t, err)
			conns = append(conns, c)
		}
		buf := make([]byte, 64)
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			k, _ := c.Read(buf)
			switch {
			case k >= 3 && string(buf[:3]) == "220":
				greeted++
			case k >= 3 && string(buf[:3]) == "421":
				refused++
			}
		}
		return conns, greeted, refused
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
	}

	h := start(t, Config{})
	conns, greeted, refused := open(h.addr(), n)
	assert.Equal(t, 20, greeted)
	assert.Equal(t, n-20, refused)
	closeAll(conns)
	normalClientEventually(t, h)

	h2 := start(t, Config{Limits: Limits{MaxConnections: n + 10, MaxConnectionsPerIP: n + 10}})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	conns, greeted, _ = open(h2.addr(), n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	require.Equal(t, n, greeted)
	per := (int64(after.HeapInuse) - int64(before.HeapInuse) + int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("server+client heap and stacks per idle connection: %d bytes", per)
	assert.Less(t, per, int64(256<<10))
	closeAll(conns)
}

// normalClientEventually waits for the refused connections' slots to be
// freed, then sends a message.
func normalClientEventually(t *testing.T, h *harness) {
	waitFor(t, func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return h.srv.total == 0
	})
	normalClient(t, h)
}
