package mtakit_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/smtp"
)

// closeCounter is a spool that counts its Close calls.
type closeCounter struct {
	*queue.Spool
	dir    string
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return c.Spool.Close() }

func openStore(t *testing.T) *closeCounter {
	t.Helper()
	dir := t.TempDir()
	sp, err := queue.Open(dir, queue.SpoolConfig{Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { sp.Close() })
	return &closeCounter{Spool: sp, dir: dir}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func localChain() *policy.Chain {
	chain := &policy.Chain{Logger: quiet()}
	chain.Rcpt("local", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		if rcpt.Addr.Domain == "example.com" {
			return policy.Accept()
		}
		return policy.Next()
	})
	return chain
}

// delivery is what the test transport was given.
type delivery struct {
	rcpts []policy.Recipient
	data  string
}

// server is a Server on a loopback listener whose deliveries arrive on a
// channel; Serve runs until the test cancels ctx.
type server struct {
	srv       *mtakit.Server
	store     *closeCounter
	addr      string
	delivered chan delivery
	cancel    context.CancelFunc
	done      chan error
}

func startServer(t *testing.T, chain *policy.Chain) *server {
	t.Helper()
	s := &server{store: openStore(t), delivered: make(chan delivery, 10), done: make(chan error, 1)}
	s.srv = &mtakit.Server{
		Hostname: "mx.example.com",
		Chain:    chain,
		Store:    s.store,
		Logger:   quiet(),
		SMTP:     smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}},
		Delivery: queue.Config{
			Transports: map[string]queue.Transport{"test": queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
				// The message is the transport's only while Deliver runs.
				var b strings.Builder
				if _, err := d.Message.WriteTo(&b); err != nil {
					return []policy.Reply{{Code: 451, Enhanced: "4.3.0", Text: err.Error()}}
				}
				s.delivered <- delivery{rcpts: d.Rcpts, data: b.String()}
				return make([]policy.Reply, len(d.Rcpts)) // zero replies: delivered
			})},
			DefaultRoute: policy.Route{Transport: "test"},
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- s.srv.Serve(ctx, []net.Listener{ln}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return s
}

// stop cancels Serve's context and returns what Serve returned.
func (s *server) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func send(addr, to, body string) error {
	c, err := gosmtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	return c.SendMail("alice@example.org", []string{to}, strings.NewReader(body))
}

func TestServerDelivers(t *testing.T) {
	s := startServer(t, localChain())
	require.NoError(t, send(s.addr, "bob@example.com", "Subject: hi\r\n\r\nHello.\r\n"))
	select {
	case d := <-s.delivered:
		require.Len(t, d.rcpts, 1)
		assert.Equal(t, "bob@example.com", d.rcpts[0].Addr.String())
		assert.Contains(t, d.data, "by mx.example.com", "the hostname was given once, to Server")
		assert.Contains(t, d.data, "Hello.")
	case <-time.After(10 * time.Second):
		t.Fatal("not delivered")
	}
	err := send(s.addr, "carol@example.net", "Subject: relay\r\n\r\nNo.\r\n")
	var se *gosmtp.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 554, se.Code, "the chain's relay default")

	require.NoError(t, s.stop(t), "a stop by ctx is not an error")
	assert.Equal(t, int32(1), s.store.closed.Load(), "Serve closes the store")
	_, err = net.DialTimeout("tcp", s.addr, time.Second)
	assert.Error(t, err, "the listener is closed")
}

// TestServerShutdownLetsDataFinish: when ctx ends while a message is being
// received, the client still gets its 250 and the message is kept; only
// then are the scheduler stopped and the store closed.
func TestServerShutdownLetsDataFinish(t *testing.T) {
	inPreq, release := make(chan struct{}), make(chan struct{})
	chain := localChain()
	chain.PreQ("slow", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		close(inPreq)
		<-release
		return policy.Next()
	})
	// Nothing is delivered: the message must stay in the store.
	chain.Delivery("hold", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, r *policy.Route) policy.Verdict {
		return policy.Defer("4.3.2", "not now")
	})
	s := startServer(t, chain)
	sent := make(chan error, 1)
	go func() { sent <- send(s.addr, "bob@example.com", "Subject: late\r\n\r\nStill here.\r\n") }()
	<-inPreq
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop(t) }()
	// The listener closes at once; the session in DATA goes on.
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 10*time.Millisecond)
	assert.Zero(t, s.store.closed.Load(), "the store stays open while a message is received")
	close(release)
	require.NoError(t, <-sent, "the client got its 250")
	require.NoError(t, <-stopped)
	assert.Equal(t, int32(1), s.store.closed.Load())

	sp, err := queue.Open(s.store.dir, queue.SpoolConfig{Logger: quiet()})
	require.NoError(t, err)
	defer sp.Close()
	var n int
	for _, q := range []string{queue.Working, queue.Deliver, queue.Deferred} {
		ids, err := sp.IDs(q)
		require.NoError(t, err)
		n += len(ids)
	}
	assert.Equal(t, 1, n, "the message is in the queue")
}

func TestServerConfig(t *testing.T) {
	tests := []struct {
		name string
		edit func(*mtakit.Server)
		lns  int
		want string
	}{
		{"no chain", func(s *mtakit.Server) { s.Chain = nil }, 1, "Chain is required"},
		{"no listener", func(s *mtakit.Server) { s.SMTP.Listeners = nil }, 0, "no listeners"},
		{"listeners mismatch", func(s *mtakit.Server) {}, 2, "2 listeners for 1"},
		{"hostname twice", func(s *mtakit.Server) { s.SMTP.Hostname = "other" }, 1, "not in Server.SMTP"},
		{"chain twice", func(s *mtakit.Server) { s.Delivery.Chain = s.Chain }, 1, "not in Server.Delivery"},
		{"submission without auth", func(s *mtakit.Server) { s.SMTP.Listeners[0].Role = smtp.RoleSubmission }, 1, "requires AUTH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := openStore(t)
			srv := &mtakit.Server{Chain: localChain(), Store: store, Logger: quiet(),
				SMTP: smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}}}
			tt.edit(srv)
			var lns []net.Listener
			for range tt.lns {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				lns = append(lns, ln)
			}
			err := srv.Serve(context.Background(), lns)
			require.ErrorIs(t, err, smtp.ErrConfig)
			assert.ErrorContains(t, err, tt.want)
			assert.Equal(t, int32(1), store.closed.Load(), "the store is closed")
			for _, ln := range lns {
				_, err := ln.Accept()
				assert.Error(t, err, "the listener is closed")
			}
		})
	}
}

func TestRunListenError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	store := openStore(t)
	srv := &mtakit.Server{Chain: localChain(), Store: store, Logger: quiet(),
		SMTP: smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Addr: busy.Addr().String(), Role: smtp.RoleMTA}}}}
	err = srv.Run(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), `listener "mta"`)
	assert.Equal(t, int32(1), store.closed.Load())
}

// A listener that fails stops the server with its error.
func TestServerListenerFailure(t *testing.T) {
	store := openStore(t)
	srv := &mtakit.Server{Chain: localChain(), Store: store, Logger: quiet(),
		SMTP: smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}}}
	err := srv.Serve(context.Background(), []net.Listener{failingListener{}})
	require.Error(t, err)
	assert.True(t, errors.Is(err, errAccept), "got %v", err)
	assert.Equal(t, int32(1), store.closed.Load())
}

var errAccept = errors.New("accept failed for good")

type failingListener struct{}

func (failingListener) Accept() (net.Conn, error) { return nil, errAccept }
func (failingListener) Close() error              { return nil }
func (failingListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

var _ io.Closer = failingListener{}
