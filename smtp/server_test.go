package smtp

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestServeContext: the end of the context given to Serve closes the server,
// open sessions included, and Serve returns ErrServerClosed.
func TestServeContext(t *testing.T) {
	srv, err := NewServer(Config{Chain: (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll),
		Queue: newFileQueue(t), Logger: testLogger(t)})
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, Listener{Name: "mta", Role: RoleMTA}) }()

	c := dialRaw(t, l.Addr().String())
	c.reply()
	c.expect("EHLO client.test", 250)
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, ErrServerClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return when its context ended")
	}
	_, err = c.r.ReadString('\n')
	assert.Error(t, err, "the open session is closed")
	assert.ErrorIs(t, srv.Close(), ErrServerClosed, "the server is closed")
}
