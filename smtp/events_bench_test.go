package smtp

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/metrics"
)

// BenchmarkAcceptMetrics is BenchmarkAccept with metrics on: Events and
// the chain's Observer are a *metrics.Metrics. Run both, interleaved, to
// see what counting costs per message.
func BenchmarkAcceptMetrics(b *testing.B) {
	acceptCases(b, func(b *testing.B, body []byte, log *slog.Logger) {
		m := metrics.New()
		chain := (&policy.Chain{Logger: slog.New(slog.DiscardHandler), Observer: m.Observe}).Rcpt("all", acceptAll)
		h := start(b, Config{Chain: chain, Queue: nopQueue{}, Logger: log, Events: m})
		c, err := gosmtp.Dial(h.addr())
		require.NoError(b, err)
		defer c.Close()
		require.NoError(b, c.Hello("bench.test"))
		report := measure(b, len(body))
		for range b.N {
			require.NoError(b, c.Mail("s@bench.test", nil))
			require.NoError(b, c.Rcpt("a@mx.test", nil))
			w, err := c.Data()
			require.NoError(b, err)
			w.Write(body)
			require.NoError(b, w.Close())
		}
		report()
	})
}

// BenchmarkReceiveMetrics is BenchmarkReceive with metrics on, counting
// as session.Data does (the size reader, MessageReceived) and the rules'
// decisions.
func BenchmarkReceiveMetrics(b *testing.B) {
	acceptCases(b, func(b *testing.B, body []byte, log *slog.Logger) {
		m := metrics.New()
		chain := (&policy.Chain{Logger: slog.New(slog.DiscardHandler), Observer: m.Observe}).Rcpt("all", acceptAll)
		srv, err := NewServer(Config{Chain: chain, Queue: nopQueue{}, Hostname: "mx.test", Logger: log, SpoolDir: b.TempDir(), Events: m})
		require.NoError(b, err)
		defer srv.Close()
		ours, peer := net.Pipe()
		defer ours.Close()
		defer peer.Close()
		remote := netip.MustParseAddrPort("127.0.0.1:40000")
		c := newConn(srv, ours, remote.Addr())
		c.pc = &policy.Conn{ID: policy.NewID(), Listener: "mta", Remote: remote, Local: netip.MustParseAddrPort("127.0.0.1:25"), Started: time.Now(), Helo: "bench.test", ESMTP: true}
		c.log = log.With("conn", c.pc.ID, "listener", "mta", "remote", remote.String())
		defer c.Close()
		s := &session{srv: srv, lc: Listener{Name: "mta", Role: RoleMTA}, c: c, heloName: "bench.test"}
		var r bytes.Reader
		report := measure(b, len(body))
		for range b.N {
			require.NoError(b, s.Mail("s@bench.test", nil))
			require.NoError(b, s.Rcpt("a@mx.test", nil))
			r.Reset(body)
			s.size = sizeReader{r: &r}
			reply, ok := srv.receive(c, ours, s.tx, &s.size)
			m.MessageReceived(s.lc.Name, reply.Code, s.size.n)
			if !ok {
				b.Fatal(reply)
			}
			s.tx = nil
		}
		report()
	})
}
