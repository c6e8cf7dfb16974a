package dnstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL given to records whose zone-file line has none.
const DefaultTTL = 300

// maxCNAMEChain bounds how many CNAMEs are followed inside the zone.
const maxCNAMEChain = 16

// Query is one question the server received, in arrival order.
type Query struct {
	Name     string // as sent, fully qualified
	Type     uint16 // dns.TypeA, dns.TypeTXT, ...
	Net      string // "udp" or "tcp"
	Answered bool   // false when the name was set to Timeout
}

// Server is an authoritative DNS server on 127.0.0.1 (UDP and TCP on the
// same port) serving an in-memory zone. All methods are safe for
// concurrent use, including while queries are being served.
type Server struct {
	addr string
	tb   testing.TB // set by New; used to report bad records in Add

	udp, tcp *dns.Server
	done     sync.WaitGroup
	closeMu  sync.Mutex
	closed   bool

	mu       sync.Mutex
	records  map[string][]dns.RR // lower-case FQDN -> records
	fails    map[string]int      // lower-case FQDN -> rcode
	timeouts map[string]bool     // lower-case FQDN
	log      []Query
	answered int
}

// New starts a server serving records (zone-file lines, see [Server.Add])
// and registers a Cleanup on tb that stops it. A bad record or a failure
// to listen fails the test at once.
func New(tb testing.TB, records ...string) *Server {
	tb.Helper()
	s, err := Start(records...)
	if err != nil {
		tb.Fatalf("dnstest: %v", err)
	}
	s.tb = tb
	tb.Cleanup(s.Close)
	return s
}

// Start starts a server serving records, for use where there is no
// testing.TB (examples, TestMain). The caller must call Close.
func Start(records ...string) (*Server, error) {
	s := &Server{
		records:  make(map[string][]dns.RR),
		fails:    make(map[string]int),
		timeouts: make(map[string]bool),
	}
	if err := s.add(records); err != nil {
		return nil, err
	}
	pc, ln, err := listen()
	if err != nil {
		return nil, err
	}
	s.addr = pc.LocalAddr().String()

	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serveUDP), NotifyStartedFunc: notify}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serveTCP), NotifyStartedFunc: notify}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		s.done.Add(1)
		go func() {
			defer s.done.Done()
			_ = srv.ActivateAndServe()
		}()
	}
	// Wait until both are started so that Close can always shut them down.
	<-started
	<-started
	return s, nil
}

// listen binds UDP and TCP on the same loopback port.
func listen() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("listen tcp on the udp port: %w", lastErr)
}

// Close stops the server and waits for it to finish. It is safe to call
// more than once.
func (s *Server) Close() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
	s.done.Wait()
}

// Addr returns the server's address, "127.0.0.1:port", for both UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Resolver returns a *net.Resolver using Go's own stub resolver
// (PreferGo) whose Dial always goes to this server: over UDP, and over
// TCP when the stub asks for it (after a truncated answer, or with
// "options use-vc" in resolv.conf). The server address the stub thinks it
// is using (from /etc/resolv.conf) is ignored, though Go still reports it
// in DNSError.Server. Canceling the lookup's context interrupts a query in
// flight (plain Go waits for the read deadline).
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			nw := "udp"
			if strings.HasPrefix(network, "tcp") {
				nw = "tcp"
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, nw, s.addr)
			if err != nil {
				return nil, err
			}
			// Go's stub only bounds a read by the conn deadline; make a
			// canceled context end the exchange at once instead of after
			// the resolv.conf timeout (5s by default).
			context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
			return c, nil
		},
	}
}

// Add adds records while serving. Each string holds one or more zone-file
// lines such as
//
//	example.com. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
//	mx.test. IN MX 10 mail.test.
//	mail.test. A 127.0.0.1
//	4.3.2.1.in-addr.arpa. PTR host.test.
//	*.wild.test. TXT "synthesized"
//
// A missing TTL defaults to 300 and a missing class to IN; names without a
// trailing dot are taken relative to the root. A quoted TXT string longer
// than 255 bytes is split into 255-byte character-strings. Full zone-file
// syntax is accepted ($ORIGIN, $TTL, parentheses across lines, comments).
//
// A record that does not parse fails the test (servers from New) or
// panics (servers from Start; use AddRecords to get the error instead).
func (s *Server) Add(records ...string) {
	if err := s.add(records); err != nil {
		if s.tb != nil {
			s.tb.Helper()
			s.tb.Fatalf("dnstest: %v", err)
		}
		panic("dnstest: " + err.Error())
	}
}

// AddRecords is Add returning the parse error instead of failing; nothing
// is added when an error is returned.
func (s *Server) AddRecords(records ...string) error { return s.add(records) }

// AddRR adds already-built records.
func (s *Server) AddRR(rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		s.insert(dns.Copy(rr))
	}
}

// AddPTR adds a PTR record for ip (IPv4 or IPv6, under in-addr.arpa or
// ip6.arpa) pointing at host. It panics if ip is not an IP address.
func (s *Server) AddPTR(ip, host string) {
	name, err := dns.ReverseAddr(ip)
	if err != nil {
		panic("dnstest: AddPTR: " + err.Error())
	}
	s.AddRR(&dns.PTR{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: DefaultTTL},
		Ptr: dns.Fqdn(host),
	})
}

func (s *Server) add(records []string) error {
	var parsed []dns.RR
	for _, rec := range records {
		rrs, err := Parse(rec)
		if err != nil {
			return err
		}
		parsed = append(parsed, rrs...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range parsed {
		s.insert(rr)
	}
	return nil
}

// insert adds rr unless an identical record is already there. s.mu held.
func (s *Server) insert(rr dns.RR) {
	key := canonical(rr.Header().Name)
	for _, have := range s.records[key] {
		if dns.IsDuplicate(have, rr) {
			return
		}
	}
	s.records[key] = append(s.records[key], rr)
}

// Parse parses zone-file text into records the way Add does (default TTL
// 300, class IN, origin the root, long TXT strings split at 255 bytes).
func Parse(text string) ([]dns.RR, error) {
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	zp := dns.NewZoneParser(strings.NewReader(text), ".", "")
	zp.SetDefaultTTL(DefaultTTL)
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("bad record %q: %w", strings.TrimSpace(text), err)
	}
	return rrs, nil
}

// Remove removes all records of name with type rrtype; rrtype 0
// (dns.TypeNone) or dns.TypeANY removes every record of name.
func (s *Server) Remove(name string, rrtype uint16) {
	key := canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rrtype == dns.TypeNone || rrtype == dns.TypeANY {
		delete(s.records, key)
		return
	}
	kept := s.records[key][:0]
	for _, rr := range s.records[key] {
		if rr.Header().Rrtype != rrtype {
			kept = append(kept, rr)
		}
	}
	if len(kept) == 0 {
		delete(s.records, key)
	} else {
		s.records[key] = kept
	}
}

// Fail makes the server answer every query for name (any type, exact
// name only) with rcode, e.g. dns.RcodeServerFailure or dns.RcodeRefused.
// It overrides the records and Timeout until Heal.
func (s *Server) Fail(name string, rcode int) {
	key := canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.timeouts, key)
	s.fails[key] = rcode
}

// Timeout makes the server never answer queries for name (any type,
// exact name only, UDP and TCP), until Heal.
func (s *Server) Timeout(name string) {
	key := canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.fails, key)
	s.timeouts[key] = true
}

// Heal undoes Fail and Timeout for name.
func (s *Server) Heal(name string) {
	key := canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.fails, key)
	delete(s.timeouts, key)
}

// Queries returns the number of queries answered so far (a UDP answer
// that was truncated and retried over TCP counts twice; queries dropped
// by Timeout are not counted, see QueryLog).
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered
}

// QueryLog returns every query received so far, answered or not, in order.
func (s *Server) QueryLog() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.log...)
}

// ResetQueries clears the query counter and log.
func (s *Server) ResetQueries() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answered = 0
	s.log = nil
}

func canonical(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func (s *Server) serveUDP(w dns.ResponseWriter, req *dns.Msg) { s.serve(w, req, "udp") }
func (s *Server) serveTCP(w dns.ResponseWriter, req *dns.Msg) { s.serve(w, req, "tcp") }

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg, network string) {
	resp, ok := s.answer(req, network)
	if !ok {
		return // Timeout: say nothing.
	}
	size := dns.MaxMsgSize
	if network == "udp" {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(uint16(min(size, 4096)), false)
	}
	resp.Truncate(size)
	_ = w.WriteMsg(resp)
}

// answer builds the response to req; ok is false when it must be dropped.
func (s *Server) answer(req *dns.Msg, network string) (resp *dns.Msg, ok bool) {
	resp = new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = false
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		s.mu.Lock()
		s.answered++
		s.mu.Unlock()
		return resp, true
	}
	q := req.Question[0]
	key := canonical(q.Name)

	s.mu.Lock()
	defer s.mu.Unlock()
	entry := Query{Name: q.Name, Type: q.Qtype, Net: network}
	if s.timeouts[key] {
		s.log = append(s.log, entry)
		return nil, false
	}
	entry.Answered = true
	s.log = append(s.log, entry)
	s.answered++

	if rcode, failed := s.fails[key]; failed {
		resp.Rcode = rcode
		return resp, true
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		resp.Rcode = dns.RcodeRefused
		return resp, true
	}
	resp.Answer, resp.Rcode = s.resolve(q.Name, q.Qtype)
	return resp, true
}

// resolve answers qname/qtype from the zone, following in-zone CNAMEs.
// s.mu held.
func (s *Server) resolve(qname string, qtype uint16) ([]dns.RR, int) {
	var answer []dns.RR
	name := qname
	seen := map[string]bool{}
	for range maxCNAMEChain {
		key := canonical(name)
		if seen[key] {
			return answer, dns.RcodeServerFailure // CNAME loop
		}
		seen[key] = true
		rrs, exists := s.lookup(key)
		if !exists {
			return answer, dns.RcodeNameError
		}
		var cname *dns.CNAME
		matched := false
		for _, rr := range rrs {
			t := rr.Header().Rrtype
			if t == qtype || qtype == dns.TypeANY {
				answer = append(answer, withOwner(rr, name))
				matched = true
			}
			if c, ok := rr.(*dns.CNAME); ok && cname == nil {
				cname = c
			}
		}
		if matched || cname == nil {
			return answer, dns.RcodeSuccess // answer, or NODATA
		}
		answer = append(answer, withOwner(cname, name))
		name = cname.Target
	}
	return answer, dns.RcodeSuccess
}

// lookup returns the records at key (a canonical name), synthesized from
// a wildcard if the name does not exist. exists is false for NXDOMAIN.
// s.mu held.
func (s *Server) lookup(key string) (rrs []dns.RR, exists bool) {
	if rrs, ok := s.records[key]; ok {
		return rrs, true
	}
	if s.hasDescendant(key) {
		return nil, true // empty non-terminal: NODATA
	}
	// RFC 4592: find the closest encloser, then try its wildcard.
	for name := parent(key); name != ""; name = parent(name) {
		if wild, ok := s.records["*."+name]; ok {
			return wild, true
		}
		if _, ok := s.records[name]; ok || s.hasDescendant(name) {
			break // closest encloser has no wildcard
		}
	}
	return nil, false
}

// hasDescendant reports whether some name strictly below key has records.
func (s *Server) hasDescendant(key string) bool {
	suffix := "." + key
	if key == "." {
		suffix = "."
	}
	for name := range s.records {
		if name != key && strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

// parent returns the parent of a canonical name, "" for the root.
func parent(name string) string {
	if name == "." || name == "" {
		return ""
	}
	i := strings.IndexByte(name, '.')
	if i == len(name)-1 {
		return "."
	}
	return name[i+1:]
}

func withOwner(rr dns.RR, owner string) dns.RR {
	c := dns.Copy(rr)
	c.Header().Name = owner
	return c
}
