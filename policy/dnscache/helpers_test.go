package dnscache_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// fakeServer is a DNS server on loopback (UDP and TCP on one port) whose
// answers a test writes by hand, for what internal/dnstest does not do:
// SOA records in negative answers, alias-only answers, wrong questions,
// answers held back until the test lets them go.
type fakeServer struct {
	addr    string
	queries atomic.Int32
}

// startFake serves answer's replies; a nil reply is not sent.
func startFake(t *testing.T, answer func(req *dns.Msg) *dns.Msg) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	require.NotNil(t, pc, "no loopback port free for UDP and TCP")
	f.addr = pc.LocalAddr().String()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		f.queries.Add(1)
		if resp := answer(req); resp != nil {
			_ = w.WriteMsg(resp)
		}
	})
	var started sync.WaitGroup
	started.Add(2)
	servers := []*dns.Server{
		{PacketConn: pc, Handler: handler, NotifyStartedFunc: started.Done},
		{Listener: ln, Handler: handler, NotifyStartedFunc: started.Done},
	}
	var done sync.WaitGroup
	for _, s := range servers {
		done.Go(func() { _ = s.ActivateAndServe() })
	}
	started.Wait()
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
		done.Wait()
	})
	return f
}

func (f *fakeServer) count() int { return int(f.queries.Load()) }

// reply starts a reply to req with rcode and records (zone-file lines).
func reply(t *testing.T, req *dns.Msg, rcode int, answer ...string) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.Authoritative = true
	for _, line := range answer {
		m.Answer = append(m.Answer, mustRR(t, line))
	}
	return m
}

func mustRR(t *testing.T, line string) dns.RR {
	rr, err := dns.NewRR(line)
	if err != nil {
		t.Errorf("bad record %q: %v", line, err)
		return nil
	}
	return rr
}

// soa is an SOA record for the authority section of a negative answer.
func soa(t *testing.T, ttl, minimum uint32) dns.RR {
	rr := mustRR(t, "test. 0 IN SOA ns.test. hostmaster.test. 1 7200 3600 1209600 0")
	s := rr.(*dns.SOA)
	s.Hdr.Ttl, s.Minttl = ttl, minimum
	return s
}

// clock is a settable clock for SetClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
