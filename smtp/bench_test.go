package smtp

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// nopQueue accepts every message without reading it: what is left to
// measure is the server's own accept path.
type nopQueue struct{}

func (nopQueue) Enqueue(context.Context, *policy.Transaction, *policy.Message) error { return nil }

// BenchmarkAccept measures the per-message accept path (MAIL, RCPT, DATA,
// preq rules, Enqueue, 250) over one loopback connection with a queue that
// does nothing, for small and large messages, with the logs discarded and
// with an Info-level text handler (as a production server runs). Client
// and server run in this process, so the figures include the client's
// share; compare them before and after a change, not with other servers.
func BenchmarkAccept(b *testing.B) {
	acceptCases(b, func(b *testing.B, body []byte, log *slog.Logger) {
		h := start(b, Config{Queue: nopQueue{}, Logger: log})
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

// BenchmarkBodyChecker measures the smuggling check alone over 1 MiB fed
// in the 32 KiB pieces receive copies through, for ASCII and 8-bit text.
func BenchmarkBodyChecker(b *testing.B) {
	for _, tc := range []struct{ name, line string }{
		{"ascii", strings.Repeat("0123456789abcdef", 4) + "\r\n"},
		{"8bit", strings.Repeat("caf\xc3\xa9 na\xc3\xafve ", 5) + "\r\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(strings.Repeat(tc.line, (1<<20)/len(tc.line)))
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for range b.N {
				var chk bodyChecker
				for p := body; len(p) > 0; {
					n := min(len(p), 32<<10)
					if _, err := chk.Write(p[:n]); err != nil {
						b.Fatal(err)
					}
					p = p[n:]
				}
				chk.Close()
				if chk.Err() != bodyOK {
					b.Fatal(chk.Err())
				}
			}
		})
	}
}

// BenchmarkReceive measures the server's own part of accepting a message,
// without sockets or go-smtp: MAIL and RCPT through the session (rules,
// transaction, logs), then receive (spool file, smuggling check, Received
// field, preq rules, Enqueue, the 250) with a queue that does nothing.
// CPU per message here is ours alone; BenchmarkAccept adds go-smtp, the
// client and loopback TCP.
func BenchmarkReceive(b *testing.B) {
	acceptCases(b, func(b *testing.B, body []byte, log *slog.Logger) {
		chain := (&policy.Chain{Logger: slog.New(slog.DiscardHandler)}).Rcpt("all", acceptAll)
		srv, err := NewServer(Config{Chain: chain, Queue: nopQueue{}, Hostname: "mx.test", Logger: log, SpoolDir: b.TempDir()})
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
			reply, ok := srv.receive(c, ours, s.tx, &r)
			if !ok {
				b.Fatal(reply)
			}
			s.tx = nil
		}
		report()
	})
}

// measure starts the timed loop of an accept benchmark (bytes per op,
// allocations); the func it returns, called after the loop, adds the
// process's CPU time per op (cpu-ns/op) where getrusage(2) exists.
func measure(b *testing.B, bytes int) (report func()) {
	b.SetBytes(int64(bytes))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	return func() {
		if cpu := processCPU(); cpu > 0 {
			b.ReportMetric(float64(cpu-cpu0)/float64(b.N), "cpu-ns/op")
		}
	}
}

// acceptCases runs bench for 4 KiB and 100 KiB messages, each with the
// logs discarded and with an Info-level text handler (as a production
// server runs).
func acceptCases(b *testing.B, bench func(b *testing.B, body []byte, log *slog.Logger)) {
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for _, size := range []struct {
		name  string
		bytes int
	}{{"4KiB", 4 << 10}, {"100KiB", 100 << 10}} {
		body := []byte("From: a@bench.test\r\nTo: b@mx.test\r\nSubject: bench\r\n\r\n" + strings.Repeat(line, size.bytes/len(line)))
		for _, lg := range []struct {
			name string
			log  *slog.Logger
		}{
			{"nolog", slog.New(slog.DiscardHandler)},
			{"textlog", slog.New(slog.NewTextHandler(io.Discard, nil))},
		} {
			b.Run(size.name+"/"+lg.name, func(b *testing.B) { bench(b, body, lg.log) })
		}
	}
}
