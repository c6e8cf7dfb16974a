package dnscache

import (
	"context"
	"errors"
	"math"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size announced with EDNS0: the DNS flag
	// day 2020 value, which avoids IP fragmentation.
	ednsSize = 1232
	// attempts is how many rounds over the servers a query gets, as
	// resolv.conf's default "attempts:2": one lost UDP datagram is not a
	// failure.
	attempts = 2
	// maxRequery bounds how many times a CNAME target is asked for when a
	// server answered with the alias only (an authoritative server whose
	// alias points out of its zone).
	maxRequery = 8
)

var errNoServers = errors.New("no nameservers")

// key names a cached answer: the lower-case fully qualified name and the
// query type.
type key struct {
	name  string
	qtype uint16
}

// outcome is the result of resolving one name and type, shared by every
// lookup that waited for it and kept in the cache when ttl > 0.
type outcome struct {
	rrs []dns.RR      // the records of the asked type, after the CNAME chain
	err *net.DNSError // a failure, as a template: the caller's name is set on a copy
	ttl time.Duration // how long it may be cached; 0 means not at all
}

// result returns o as a lookup of name returns it.
func (o outcome) result(name string) ([]dns.RR, error) {
	if o.err != nil {
		e := *o.err
		e.Name = name
		return nil, &e
	}
	return o.rrs, nil
}

func notFound(server string) *net.DNSError {
	return &net.DNSError{Err: "no such host", Server: server, IsNotFound: true}
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// lookup returns the records of type qtype at name (after CNAMEs), from the
// cache or from the servers, or a *net.DNSError classified as
// net.Resolver classifies it.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	if r.serverErr != nil {
		return nil, &net.DNSError{Err: "no DNS servers: " + r.serverErr.Error(), Name: name, IsTemporary: true, UnwrapErr: r.serverErr}
	}
	fqdn := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fqdn); !ok || name == "" {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	k := key{name: strings.ToLower(fqdn), qtype: qtype}
	if o, ok := r.cache.get(k, r.now()); ok {
		return o.result(name)
	}
	if err := ctx.Err(); err != nil {
		return nil, contextError(err, name)
	}
	f, cached := r.flights.join(k, r.cache, r.now, func() outcome { return r.resolve(ctx, fqdn, qtype) })
	if f == nil {
		return cached.result(name)
	}
	select {
	case <-f.done:
		return f.out.result(name)
	case <-ctx.Done():
		return nil, contextError(ctx.Err(), name)
	}
}

// contextError is the error net.Resolver gives for a lookup whose context
// ended: a timeout (temporary) for a deadline, "operation was canceled"
// otherwise; errors.Is finds the context's error.
func contextError(err error, name string) *net.DNSError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true, IsTemporary: true, UnwrapErr: err}
	}
	return &net.DNSError{Err: "operation was canceled", Name: name, UnwrapErr: err}
}

// resolve asks the servers for fqdn/qtype, following CNAMEs, and stores a
// cacheable outcome. It runs detached from the context of the lookup that
// started it (keeping its values), bounded by the query timeout, so that
// every lookup waiting for it, and the cache, get its answer.
func (r *Resolver) resolve(ctx context.Context, fqdn string, qtype uint16) outcome {
	ctx = context.WithoutCancel(ctx)
	name := fqdn
	minTTL := uint32(math.MaxUint32)
	for range maxRequery + 1 {
		msg, server, derr := r.query(ctx, name, qtype)
		if derr != nil {
			r.log.Debug("dnscache: query failed", "name", name, "type", dns.TypeToString[qtype], "server", derr.Server, "err", derr.Err)
			return outcome{err: derr}
		}
		a := extract(msg, name, qtype)
		minTTL = min(minTTL, a.ttl)
		if len(a.rrs) > 0 {
			return outcome{rrs: a.rrs, ttl: min(seconds(minTTL), r.maxTTL)}
		}
		soaTTL, hasSOA := negativeTTL(msg)
		if msg.Rcode == dns.RcodeSuccess && a.end != name && !hasSOA {
			// Only the alias: ask for its target.
			name = a.end
			continue
		}
		o := outcome{err: notFound(server)}
		if hasSOA {
			// RFC 2308 section 5: no longer than the SOA's own TTL and
			// its MINIMUM field; without an SOA, not at all.
			o.ttl = min(seconds(min(soaTTL, minTTL)), r.maxNegTTL)
		}
		return o
	}
	return outcome{err: &net.DNSError{Err: "CNAME chain too long", Server: r.servers[0], IsTemporary: true}}
}

func seconds(ttl uint32) time.Duration { return time.Duration(ttl) * time.Second }

// query sends one question to the servers in turn, for up to [attempts]
// rounds, until one gives an answer (NOERROR or NXDOMAIN).
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, *net.DNSError) {
	var last *net.DNSError
	for range attempts {
		for _, server := range r.servers {
			msg, err := r.exchange(ctx, server, name, qtype)
			switch {
			case err != nil:
				last = exchangeError(err, server)
			case msg.Rcode == dns.RcodeSuccess || msg.Rcode == dns.RcodeNameError:
				return msg, server, nil
			default:
				// SERVFAIL, REFUSED or an rcode that makes no sense for
				// the question: the server cannot answer now. net calls
				// only SERVFAIL temporary; RFC 7208 section 4.4 and
				// every consumer here treat all of them as temporary.
				last = &net.DNSError{Err: "server misbehaving", Server: server, IsTemporary: true,
					UnwrapErr: errors.New("rcode " + dns.RcodeToString[msg.Rcode])}
			}
		}
	}
	return nil, "", last
}

var errMismatch = errors.New("reply does not match the question")

// exchange sends name/qtype to server over UDP with EDNS0, and again over
// TCP if the answer came truncated.
func (r *Resolver) exchange(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype) // a random ID, RD set
	q.SetEdns0(ednsSize, false)
	// The client reads on past replies whose ID differs (late answers to
	// earlier queries, or spoofing attempts) until the deadline.
	in, _, err := r.udp.ExchangeContext(ctx, q, server)
	if in != nil && in.Truncated {
		q.Id = dns.Id()
		in, _, err = r.tcp.ExchangeContext(ctx, q, server)
	}
	if err != nil {
		return nil, err
	}
	if !matches(q, in) {
		return nil, errMismatch
	}
	return in, nil
}

// matches reports whether in is a reply to q's question.
func matches(q, in *dns.Msg) bool {
	if !in.Response || len(in.Question) != 1 {
		return false
	}
	got, want := in.Question[0], q.Question[0]
	return got.Qtype == want.Qtype && got.Qclass == want.Qclass && strings.EqualFold(got.Name, want.Name)
}

// exchangeError classifies a failed exchange as net.Resolver does: a
// timeout is temporary; so is any other failure to get a matching reply
// (connection refused, a malformed reply).
func exchangeError(err error, server string) *net.DNSError {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return &net.DNSError{Err: "i/o timeout", Server: server, IsTimeout: true, IsTemporary: true, UnwrapErr: err}
	}
	return &net.DNSError{Err: err.Error(), Server: server, IsTemporary: true, UnwrapErr: err}
}

// answer is what extract finds in a reply.
type answer struct {
	rrs []dns.RR // records of the asked type at the end of the chain
	end string   // the end of the CNAME chain (the name itself if none)
	ttl uint32   // the smallest TTL of the CNAMEs and records used
}

// extract follows name's CNAME chain through msg's answer section and
// returns the records of qtype at its end. Records of other names (not on
// the chain) and other classes are ignored.
func extract(msg *dns.Msg, name string, qtype uint16) answer {
	a := answer{end: name, ttl: math.MaxUint32}
	// Each step uses up one CNAME, so the chain is at most as long as the
	// answer section (a loop ends there too).
	for range len(msg.Answer) + 1 {
		var cname *dns.CNAME
		for _, rr := range msg.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, a.end) {
				continue
			}
			if h.Rrtype == qtype {
				if !wellTyped(rr, qtype) {
					continue
				}
				a.rrs = append(a.rrs, rr)
				a.ttl = min(a.ttl, h.Ttl)
			} else if c, ok := rr.(*dns.CNAME); ok && cname == nil {
				cname = c
			}
		}
		if len(a.rrs) > 0 || cname == nil {
			break
		}
		a.ttl = min(a.ttl, cname.Hdr.Ttl)
		a.end = cname.Target
	}
	return a
}

// wellTyped reports whether rr has the Go type the lookups assert for
// qtype (a record miekg/dns could not decode comes as *dns.RFC3597).
func wellTyped(rr dns.RR, qtype uint16) bool {
	switch qtype {
	case dns.TypeTXT:
		_, ok := rr.(*dns.TXT)
		return ok
	case dns.TypeMX:
		_, ok := rr.(*dns.MX)
		return ok
	case dns.TypeA:
		a, ok := rr.(*dns.A)
		return ok && a.A.To4() != nil
	case dns.TypeAAAA:
		a, ok := rr.(*dns.AAAA)
		return ok && len(a.AAAA) == net.IPv6len
	case dns.TypePTR:
		_, ok := rr.(*dns.PTR)
		return ok
	}
	return true
}

// negativeTTL returns the negative-caching TTL of a reply per RFC 2308:
// the smaller of the SOA record's TTL and its MINIMUM field, from the
// authority section. ok is false when there is no SOA.
func negativeTTL(msg *dns.Msg) (ttl uint32, ok bool) {
	for _, rr := range msg.Ns {
		if soa, isSOA := rr.(*dns.SOA); isSOA && soa.Hdr.Class == dns.ClassINET {
			return min(soa.Hdr.Ttl, soa.Minttl), true
		}
	}
	return 0, false
}
