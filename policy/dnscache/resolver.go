package dnscache

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/mtakit/mtakit/policy"
)

// Defaults for the zero fields of Config.
const (
	defaultTimeout        = 5 * time.Second
	defaultMaxEntries     = 10000
	defaultMaxTTL         = time.Hour
	defaultMaxNegativeTTL = 5 * time.Minute
)

// resolvConf is where New finds the servers when it is given none (a
// variable for tests).
var resolvConf = "/etc/resolv.conf"

// Resolver is a caching stub resolver: it sends recursive queries to the
// configured servers and keeps their answers for their TTL. It satisfies
// policy.Resolver and is safe for concurrent use. The zero value is not
// usable; call New with a Config.
type Resolver struct {
	servers   []string
	serverErr error // why there are no servers (resolv.conf unreadable)

	timeout    time.Duration
	maxEntries int
	maxTTL     time.Duration
	maxNegTTL  time.Duration
	now        func() time.Time
	log        *slog.Logger

	udp, tcp *dns.Client

	cache   *cache
	flights flights
}

var _ policy.Resolver = (*Resolver)(nil)

// Config configures a Resolver. The zero Config is usable: it sends
// queries to the nameservers of /etc/resolv.conf with the defaults below.
type Config struct {
	// Servers are the DNS servers queries are sent to (host:port; a
	// missing port means 53), tried in order. Empty means the nameservers
	// of /etc/resolv.conf; if that cannot be read, every lookup fails with
	// a temporary error (and the reason is logged once).
	Servers []string

	// Timeout bounds each query sent to a server; 0 (or less) means 5 s.
	// A lookup is bounded by its context as well; a query that several
	// lookups share runs until this timeout even when the lookup that
	// started it gives up, so that the others (and the cache) still get
	// its answer.
	Timeout time.Duration

	// MaxEntries bounds the number of cached answers (one per name and
	// type); 0 means 10,000. When the cache is full, the least recently
	// used answer is dropped.
	MaxEntries int

	// MaxTTL caps how long a positive answer is kept, whatever its TTL;
	// 0 means 1 h, and a negative value turns positive caching off.
	MaxTTL time.Duration

	// MaxNegativeTTL caps how long a "no such name" or "no such record"
	// answer is kept; 0 means 5 min, and a negative value turns negative
	// caching off.
	MaxNegativeTTL time.Duration

	// Logger receives failed queries (at debug level) and a missing
	// server list (at warn level); nil means slog.Default().
	Logger *slog.Logger
}

// New returns a resolver configured by cfg. cfg is copied: changing it
// afterwards has no effect on the Resolver.
func New(cfg Config) *Resolver {
	r := &Resolver{
		timeout:    defaultTimeout,
		maxEntries: defaultMaxEntries,
		maxTTL:     positive(cfg.MaxTTL, defaultMaxTTL),
		maxNegTTL:  positive(cfg.MaxNegativeTTL, defaultMaxNegativeTTL),
		now:        time.Now,
		log:        cfg.Logger,
	}
	if cfg.Timeout > 0 {
		r.timeout = cfg.Timeout
	}
	if cfg.MaxEntries > 0 {
		r.maxEntries = cfg.MaxEntries
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	for _, s := range cfg.Servers {
		r.servers = append(r.servers, withPort(s, "53"))
	}
	if len(r.servers) == 0 {
		cc, err := dns.ClientConfigFromFile(resolvConf)
		if err == nil && len(cc.Servers) == 0 {
			err = errNoServers
		}
		if err != nil {
			r.serverErr = err
			r.log.Warn("dnscache: no DNS servers", "file", resolvConf, "err", err)
		} else {
			for _, s := range cc.Servers {
				r.servers = append(r.servers, net.JoinHostPort(s, cc.Port))
			}
		}
	}
	// EDNS0 with a 1232-byte buffer (DNS flag day 2020): large answers
	// come truncated and are asked again over TCP rather than fragmented.
	r.udp = &dns.Client{Net: "udp", UDPSize: ednsSize, Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	r.cache = newCache(r.maxEntries)
	return r
}

// positive returns d for a positive d, def for 0, and 0 (off) for a
// negative d.
func positive(d, def time.Duration) time.Duration {
	switch {
	case d > 0:
		return d
	case d == 0:
		return def
	}
	return 0
}

// withPort adds port to a server address that has none.
func withPort(server, port string) string {
	if _, _, err := net.SplitHostPort(server); err == nil {
		return server
	}
	return net.JoinHostPort(strings.Trim(server, "[]"), port)
}

// Len returns the number of answers in the cache, expired ones included
// until they are looked up or pushed out.
func (r *Resolver) Len() int { return r.cache.len() }

// Flush empties the cache.
func (r *Resolver) Flush() { r.cache.flush() }

// LookupTXT returns the TXT records of name, one string per record with
// its character-strings joined, as net.Resolver does. name is taken as
// fully qualified (no search list).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	txts := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		txts = append(txts, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return txts, nil
}

// LookupMX returns the MX records of name sorted by preference, records
// of equal preference in random order (RFC 5321 section 5.1), hosts with
// a trailing dot, as net.Resolver does.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		mxs = append(mxs, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	return mxs, nil
}

// LookupIPAddr returns the IPv4 and IPv6 addresses of host (A and AAAA,
// asked concurrently, IPv4 first). It fails only when both fail; then a
// temporary failure wins over "not found", since a retry may succeed.
// An IP address is returned as is; /etc/hosts is not read.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []net.IPAddr{{IP: net.IP(ip.AsSlice()), Zone: ip.Zone()}}, nil
	}
	var (
		wg     sync.WaitGroup
		aaaa   []dns.RR
		errSix error
	)
	wg.Go(func() { aaaa, errSix = r.lookup(ctx, host, dns.TypeAAAA) })
	a, errFour := r.lookup(ctx, host, dns.TypeA)
	wg.Wait()
	if errFour != nil && errSix != nil {
		if isNotFound(errFour) {
			return nil, errSix
		}
		return nil, errFour
	}
	addrs := make([]net.IPAddr, 0, len(a)+len(aaaa))
	for _, rr := range a {
		addrs = append(addrs, net.IPAddr{IP: rr.(*dns.A).A})
	}
	for _, rr := range aaaa {
		addrs = append(addrs, net.IPAddr{IP: rr.(*dns.AAAA).AAAA})
	}
	return addrs, nil
}

// LookupAddr returns the names of the address addr (PTR records under
// in-addr.arpa or ip6.arpa), with a trailing dot as net.Resolver gives
// them.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	arpa, err := dns.ReverseAddr(ip.WithZone("").String())
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	rrs, err := r.lookup(ctx, arpa, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		names = append(names, rr.(*dns.PTR).Ptr)
	}
	return names, nil
}
