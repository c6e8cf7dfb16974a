package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/policy"
)

// DNSBLZone is one DNS list a DNSBL consults: a block list (DNSBL) with a
// positive weight, an allow list (DNSWL) with a negative one.
type DNSBLZone struct {
	// Zone is the list's domain, "zen.spamhaus.org".
	Zone string
	// Codes selects the answers that count as a listing, in Postfix's
	// syntax: an IPv4 address whose octets are numbers or bracketed lists
	// of numbers and ranges, "127.0.0.2", "127.0.0.[2..11]",
	// "127.0.[0..255].[1;3]". "" means any answer in 127.0.0.0/8 except
	// 127.255.255.0/24, the codes some lists return to say they refused
	// the query (a public resolver, a quota), which must never read as a
	// listing.
	Codes string
	// Weight is added to the client's score when the list lists it; 0
	// means 1. A negative weight makes the zone an allow list: its listing
	// lowers the score and marks the result Allowed.
	Weight int
}

// ParseDNSBLZone parses a zone in Postfix's postscreen_dnsbl_sites syntax:
// "zone[=codes][*weight]", such as "zen.spamhaus.org",
// "zen.spamhaus.org=127.0.0.[2..11]*3" or
// "list.dnswl.org=127.0.[0..255].[1..3]*-5".
func ParseDNSBLZone(s string) (DNSBLZone, error) {
	z := DNSBLZone{}
	rest := strings.TrimSpace(s)
	if i := strings.LastIndexByte(rest, '*'); i >= 0 {
		w, err := strconv.Atoi(rest[i+1:])
		if err != nil || w == 0 {
			return DNSBLZone{}, fmt.Errorf("relay: DNS list %q: bad weight %q", s, rest[i+1:])
		}
		z.Weight, rest = w, rest[:i]
	}
	z.Zone, z.Codes, _ = strings.Cut(rest, "=")
	z.Zone, z.Codes = strings.TrimSpace(z.Zone), strings.TrimSpace(z.Codes)
	if _, err := z.compile(); err != nil {
		return DNSBLZone{}, err
	}
	return z, nil
}

// String returns z in the syntax ParseDNSBLZone reads.
func (z DNSBLZone) String() string {
	s := z.Zone
	if z.Codes != "" {
		s += "=" + z.Codes
	}
	if z.Weight != 0 {
		s += "*" + strconv.Itoa(z.Weight)
	}
	return s
}

// zone is a DNSBLZone ready for use.
type zone struct {
	name   string // normalized, no trailing dot
	codes  [4][][2]int
	any    bool // Codes was empty
	weight int
}

func (z DNSBLZone) compile() (zone, error) {
	name, err := policy.NormalizeDomain(strings.TrimSpace(z.Zone))
	if err != nil || name == "" || !strings.Contains(name, ".") {
		return zone{}, fmt.Errorf("relay: DNS list %q: bad zone name", z.Zone)
	}
	c := zone{name: name, weight: z.Weight}
	if c.weight == 0 {
		c.weight = 1
	}
	if strings.TrimSpace(z.Codes) == "" {
		c.any = true
		return c, nil
	}
	octets := splitOctets(strings.TrimSpace(z.Codes))
	if len(octets) != 4 {
		return zone{}, fmt.Errorf("relay: DNS list %q: codes %q: want four octets", z.Zone, z.Codes)
	}
	for i, o := range octets {
		if c.codes[i], err = parseOctet(o); err != nil {
			return zone{}, fmt.Errorf("relay: DNS list %q: codes %q: %w", z.Zone, z.Codes, err)
		}
	}
	return c, nil
}

// splitOctets splits codes at the dots outside brackets.
func splitOctets(codes string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(codes); i++ {
		switch codes[i] {
		case '[':
			depth++
		case ']':
			depth--
		case '.':
			if depth == 0 {
				out = append(out, codes[start:i])
				start = i + 1
			}
		}
	}
	return append(out, codes[start:])
}

// parseOctet parses "7", "[2..11]" or "[1;3;5..9]" into inclusive ranges.
func parseOctet(s string) ([][2]int, error) {
	num := func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 255 {
			return 0, fmt.Errorf("bad octet %q", s)
		}
		return n, nil
	}
	if !strings.HasPrefix(s, "[") {
		n, err := num(s)
		return [][2]int{{n, n}}, err
	}
	if !strings.HasSuffix(s, "]") || len(s) < 3 {
		return nil, fmt.Errorf("bad octet %q", s)
	}
	var out [][2]int
	for _, part := range strings.Split(s[1:len(s)-1], ";") {
		lo, hi, isRange := strings.Cut(part, "..")
		a, err := num(lo)
		if err != nil {
			return nil, err
		}
		b := a
		if isRange {
			if b, err = num(hi); err != nil {
				return nil, err
			}
		}
		if b < a {
			return nil, fmt.Errorf("bad range %q", part)
		}
		out = append(out, [2]int{a, b})
	}
	return out, nil
}

// matches reports whether the answer a counts as a listing.
func (z zone) matches(a netip.Addr) bool {
	a = a.Unmap()
	if !a.Is4() {
		return false
	}
	b := a.As4()
	if z.any {
		return b[0] == 127 && !(b[1] == 255 && b[2] == 255)
	}
	for i, o := range b {
		ok := false
		for _, r := range z.codes[i] {
			if int(o) >= r[0] && int(o) <= r[1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// DNSBLListing is one list that listed the client.
type DNSBLListing struct {
	Zone   string     // the list's domain
	Answer netip.Addr // the first answer that counted, 127.0.0.2
	Weight int        // the weight added to the score
}

// DNSBLResult is what a DNSBL found about a client, as stored under
// DNSBLResultKey. It round-trips through encoding/json.
type DNSBLResult struct {
	Client  netip.Addr
	Score   int            // sum of the weights of the lists that listed the client
	Listed  []DNSBLListing // in the order of DNSBLOptions.Zones
	Allowed bool           // an allow list (negative weight) listed the client
	Blocked bool           // Score reached the threshold
	// Failed lists the zones whose lookup failed (a timeout, SERVFAIL):
	// what they would have said is unknown.
	Failed []string
}

// DNSBLResultKey holds the DNSBL result of the transaction, set by the
// mail and rcpt rules of a DNSBL (the connect rule has no transaction to
// set it in), for later rules and logs. Greylisting can skip clients an
// allow list lists with it (see GreylistOptions.Skip).
const DNSBLResultKey policy.Key[DNSBLResult] = "relay.dnsbl"

// DNSBLOptions configure NewDNSBL. Every field's zero value is a usable
// default but Zones, which lists at least one zone.
type DNSBLOptions struct {
	// Zones are the lists consulted, all at once. Block lists have a
	// positive weight, allow lists a negative one (see DNSBLZone).
	Zones []DNSBLZone
	// Threshold is the score at which a client is refused; 0 means 1 (any
	// block list of weight 1 refuses).
	Threshold int
	// Resolver answers the queries; nil means net.DefaultResolver. A
	// caching resolver (policy/dnscache) spares the lists a query per
	// stage.
	Resolver policy.Resolver
	// Timeout bounds the lookups of one check; zero means 5 seconds. A
	// list that has not answered by then counts as failed.
	Timeout time.Duration
	// TempFail makes a check where a list failed, and the others did not
	// already refuse the client, answer 451 4.7.1 (try again later). By
	// default such a check passes: a DNS failure never refuses mail.
	TempFail bool
	// Internal lists networks whose clients are never checked (mynetworks).
	Internal []netip.Prefix
	// Logger receives refusals (info) and DNS failures (warn); nil means
	// slog.Default().
	Logger *slog.Logger
}

// DNSBL checks a client's address against DNS block and allow lists
// (RFC 5782): the IPv4 address with its octets reversed, or the IPv6
// address as reversed nibbles, is looked up under each zone. Make one with
// NewDNSBL and register its rules; it is safe for concurrent use.
type DNSBL struct {
	zones     []zone
	threshold int
	resolver  policy.Resolver
	timeout   time.Duration
	tempFail  bool
	internal  []netip.Prefix
	log       *slog.Logger
}

// NewDNSBL validates opts and returns the DNSBL. It fails when Zones is
// empty or a zone's name or codes do not parse. The options are copied.
func NewDNSBL(opts DNSBLOptions) (*DNSBL, error) {
	if len(opts.Zones) == 0 {
		return nil, errors.New("relay: NewDNSBL: no zones")
	}
	d := &DNSBL{threshold: opts.Threshold, resolver: opts.Resolver, timeout: opts.Timeout,
		tempFail: opts.TempFail, internal: append([]netip.Prefix(nil), opts.Internal...), log: opts.Logger}
	for _, z := range opts.Zones {
		c, err := z.compile()
		if err != nil {
			return nil, err
		}
		d.zones = append(d.zones, c)
	}
	if d.threshold <= 0 {
		d.threshold = 1
	}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.timeout <= 0 {
		d.timeout = 5 * time.Second
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	return d, nil
}

// queryName returns the name looked up for ip under zone, with a trailing
// dot: "2.0.0.127.zen.spamhaus.org." for 127.0.0.2, the 32 reversed
// nibbles of an IPv6 address. IPv4-mapped addresses are looked up as IPv4.
func queryName(ip netip.Addr, zone string) string {
	ip = ip.Unmap().WithZone("")
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			b.WriteString(strconv.Itoa(int(a[i])))
			b.WriteByte('.')
		}
	} else {
		const hex = "0123456789abcdef"
		a := ip.As16()
		for i := 15; i >= 0; i-- {
			b.WriteByte(hex[a[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[a[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(strings.TrimSuffix(zone, "."))
	b.WriteByte('.')
	return b.String()
}

// Check looks ip up in every zone at once and returns the result. It
// never fails: a zone whose lookup failed is named in Result.Failed.
func (d *DNSBL) Check(ctx context.Context, ip netip.Addr) DNSBLResult {
	ip = ip.Unmap().WithZone("")
	res := DNSBLResult{Client: ip}
	if !ip.IsValid() {
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	type answer struct {
		listed bool
		addr   netip.Addr
		err    error
	}
	answers := make([]answer, len(d.zones))
	var wg sync.WaitGroup
	for i, z := range d.zones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := queryName(ip, z.name)
			addrs, err := d.resolver.LookupIPAddr(ctx, name)
			if err != nil {
				if err := dnserr.Classify(ctx, name, err); !dnserr.IsNotFound(err) {
					answers[i].err = err
				}
				return
			}
			for _, a := range addrs {
				if na, ok := netip.AddrFromSlice(a.IP); ok && z.matches(na) {
					answers[i] = answer{listed: true, addr: na.Unmap()}
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, a := range answers {
		z := d.zones[i]
		switch {
		case a.err != nil:
			res.Failed = append(res.Failed, z.name)
			d.log.LogAttrs(ctx, slog.LevelWarn, "dnsbl lookup failed", slog.String("zone", z.name),
				slog.String("client_ip", ip.String()), slog.String("error", a.err.Error()))
		case a.listed:
			res.Listed = append(res.Listed, DNSBLListing{Zone: z.name, Answer: a.addr, Weight: z.weight})
			res.Score += z.weight
			if z.weight < 0 {
				res.Allowed = true
			}
		}
	}
	res.Blocked = res.Score >= d.threshold
	return res
}

// verdict turns a result into the rule's verdict; allowed is the verdict
// for a client an allow list lists.
func (d *DNSBL) verdict(ctx context.Context, r DNSBLResult, allowed policy.Verdict) policy.Verdict {
	switch {
	case r.Blocked:
		zone := ""
		for _, l := range r.Listed {
			if l.Weight > 0 {
				zone = l.Zone
				break
			}
		}
		d.log.LogAttrs(ctx, slog.LevelInfo, "dnsbl refused client", slog.String("client_ip", r.Client.String()),
			slog.String("zone", zone), slog.Int("score", r.Score))
		return policy.Deny(554, "5.7.1", fmt.Sprintf("Service unavailable; Client host [%s] blocked using %s", r.Client, zone))
	case r.Allowed:
		return allowed
	case len(r.Failed) > 0 && d.tempFail:
		return policy.Defer("4.7.1", "Service unavailable; DNS list lookup failed, try again later")
	}
	return policy.Next()
}

func (d *DNSBL) internalClient(c *policy.Conn) bool {
	return c == nil || InNetworks(c.Remote.Addr(), d.internal)
}

// ConnectRule returns the rule for the connect stage: a client whose score
// reaches the threshold gets the greeting "554 5.7.1 Service unavailable;
// Client host [192.0.2.1] blocked using zen.spamhaus.org" (Postfix's
// wording, which log watchers such as fail2ban know) and the connection
// closes. A client an allow list lists gets Accept, which skips the
// remaining connect rules. A failed lookup gives Next, or with TempFail a
// 4.7.1 refusal, which the smtp package sends as a 421 greeting. Clients in
// Internal are not checked.
//
// The connect stage runs for every listener: on a server whose submission
// port serves users on dynamic addresses (which policy block lists such as
// Spamhaus PBL list), check Conn.Listener before calling the rule.
func (d *DNSBL) ConnectRule() policy.ConnectRule {
	return func(ctx context.Context, c *policy.Conn) policy.Verdict {
		if d.internalClient(c) {
			return policy.Next()
		}
		r := d.Check(ctx, c.Remote.Addr())
		return d.verdict(ctx, r, policy.Accept())
	}
}

// MailRule returns the rule for the mail stage: the same check as
// ConnectRule, with the result stored under DNSBLResultKey. Internal and
// authenticated clients are not checked (their key is not set); an allow
// list's listing gives Next, since Accept would skip the mail rules that
// follow (SPF).
func (d *DNSBL) MailRule() policy.MailRule {
	return func(ctx context.Context, tx *policy.Transaction) policy.Verdict {
		if d.internalClient(tx.Conn) || tx.Conn.Authenticated() {
			return policy.Next()
		}
		r := d.Check(ctx, tx.Conn.Remote.Addr())
		DNSBLResultKey.Set(tx, r)
		return d.verdict(ctx, r, policy.Next())
	}
}

// RcptRule returns the rule for the rcpt stage, Postfix's reject_rbl_client
// in smtpd_recipient_restrictions: the client is looked up at the first
// recipient (or its result taken from DNSBLResultKey when an earlier rule
// of the transaction stored one) and each recipient gets the verdict, so a
// rule registered before it can still accept postmaster from a listed
// client. It never accepts a recipient: an allow list's listing gives
// Next, and the relay rules decide.
func (d *DNSBL) RcptRule() policy.RcptRule {
	return func(ctx context.Context, tx *policy.Transaction, _ policy.Recipient) policy.Verdict {
		if d.internalClient(tx.Conn) || tx.Conn.Authenticated() {
			return policy.Next()
		}
		r, ok := DNSBLResultKey.Get(tx)
		if !ok {
			r = d.Check(ctx, tx.Conn.Remote.Addr())
			if len(r.Failed) == 0 {
				DNSBLResultKey.Set(tx, r)
			}
		}
		return d.verdict(ctx, r, policy.Next())
	}
}
