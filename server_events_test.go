package mtakit_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// serverEvents records what a Server reports to its Events.
type serverEvents struct {
	mu        sync.Mutex
	rules     []string
	messages  []int
	delivered chan string
}

func (e *serverEvents) Observe(d policy.Decision) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rules = append(e.rules, d.Stage.String()+"/"+d.Rule)
}
func (e *serverEvents) Connected(string, bool)     {}
func (e *serverEvents) Disconnected(string)        {}
func (e *serverEvents) TLSHandshake(string, error) {}
func (e *serverEvents) AuthAttempted(string, int)  {}
func (e *serverEvents) DSNQueued(string)           {}
func (e *serverEvents) SpoolCommitted(int)         {}
func (e *serverEvents) MessageReceived(_ string, code int, _ int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.messages = append(e.messages, code)
}
func (e *serverEvents) DeliveryAttempted(tr string, r policy.Reply, _ time.Duration) {
	e.delivered <- tr
}

// TestServerEvents: Server.Events is given to the SMTP server and the
// scheduler, and observes the rules after the chain's own observer.
func TestServerEvents(t *testing.T) {
	var mu sync.Mutex
	var own []string
	chain := &policy.Chain{Logger: quiet(), Observer: func(d policy.Decision) {
		mu.Lock()
		defer mu.Unlock()
		own = append(own, d.Rule)
	}}
	chain.Rcpt("all", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	chain.Delivery("route", func(_ context.Context, _ *policy.Transaction, _ policy.Recipient, r *policy.Route) policy.Verdict {
		r.Transport = queue.DropTransport
		return policy.Next()
	})
	ev := &serverEvents{delivered: make(chan string, 1)}
	store := openStore(t)
	srv := &mtakit.Server{Hostname: "mx.test", Chain: chain, Store: store, Logger: quiet(), Events: ev,
		SMTP: smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}, SpoolDir: t.TempDir()}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, []net.Listener{ln}) }()
	defer func() { cancel(); <-done }()

	require.NoError(t, send(ln.Addr().String(), "b@mx.test", "Subject: x\r\n\r\nHi.\r\n"))
	select {
	case tr := <-ev.delivered:
		assert.Equal(t, queue.DropTransport, tr)
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery attempt reported")
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	assert.Equal(t, []int{250}, ev.messages)
	assert.Equal(t, []string{"rcpt/all", "delivery/route"}, ev.rules)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"all", "route"}, own, "the chain's own observer still runs")
}
