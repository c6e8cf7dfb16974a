package relay

import (
	"context"
	"crypto/tls"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/policy"
)

// Replies of the MX transport for DNS outcomes.
var (
	replyNullMX        = policy.Reply{Code: 556, Enhanced: "5.1.10", Text: "Domain does not accept mail (null MX)"}
	replyNoDomain      = policy.Reply{Code: 550, Enhanced: "5.1.2", Text: "Domain not found (no MX and no address records)"}
	replyDNSTemp       = policy.Reply{Code: 451, Enhanced: "4.4.3", Text: "Temporary DNS failure looking up the domain"}
	replyNoHostAddress = policy.Reply{Code: 550, Enhanced: "5.4.4", Text: "No address found for any mail exchanger of the domain"}
	replyNoAnswer      = policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "No mail exchanger of the domain could be reached"}
)

// MX delivers to the mail exchangers of each recipient's domain (RFC 5321
// section 5): MX records sorted by preference, equal preferences in random
// order, the domain's own addresses when it has no MX, nothing for a null
// MX (RFC 7505). Hosts are tried in order until one accepts a session; one
// session carries every recipient of a domain. The zero value is not
// usable: set Resolver and Hostname.
//
// MX ignores Route.Target: it routes by the recipient's domain only, never
// by its local part (a "user%other.test@local" goes to local's MX as is).
// An address literal domain ("user@[192.0.2.1]") is delivered to that
// address.
type MX struct {
	// Resolver looks up MX and address records (a *net.Resolver, or
	// policy.ResolverAt). Required.
	Resolver policy.Resolver
	// Hostname is our name in EHLO; it should be a fully qualified name
	// that resolves to us. Default: os.Hostname().
	Hostname string
	// Port to connect to; default 25.
	Port int
	// Dial opens connections to "ip:port" addresses; default net.Dialer.
	Dial DialFunc
	// TLS is TLSOpportunistic (the default), TLSRequired or TLSNone.
	TLS TLSMode
	// TLSConfig, when set, is used (cloned, ServerName set to the MX host
	// name) for STARTTLS; see TLSMode for the defaults.
	TLSConfig *tls.Config
	// MaxAddresses bounds how many addresses are tried per delivery; default
	// 5 (Postfix's smtp_mx_address_limit).
	MaxAddresses int
	Timeouts     Timeouts
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
}

// mxHost is one host to try.
type mxHost struct {
	name string     // host name, for TLS and logs ("" for a literal)
	ip   netip.Addr // set for an address literal
}

// Deliver sends d to the mail exchangers of its recipients' domains and
// returns one reply per recipient, in order: 2xx delivered, 4xx try again
// later, 5xx failed for good. Besides the servers' own replies, a domain's
// DNS gives 556 5.1.10 for a null MX, 550 5.1.2 for a domain with no MX
// and no address, 451 4.4.3 for a temporary DNS failure, 550 5.4.4 when no
// mail exchanger has an address, and 451 4.4.1 when none could be reached.
func (m *MX) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	if r, bad := checkDelivery(d); bad {
		return r
	}
	out := make([]policy.Reply, len(d.Rcpts))
	// Group recipients by domain, keeping the order of first appearance.
	var domains []string
	groups := map[string][]int{}
	for i, r := range d.Rcpts {
		if _, ok := groups[r.Addr.Domain]; !ok {
			domains = append(domains, r.Addr.Domain)
		}
		groups[r.Addr.Domain] = append(groups[r.Addr.Domain], i)
	}
	for _, dom := range domains {
		idx := groups[dom]
		rcpts := make([]policy.Recipient, len(idx))
		for k, i := range idx {
			rcpts[k] = d.Rcpts[i]
		}
		res := m.deliverDomain(ctx, d, dom, rcpts)
		for k, i := range idx {
			out[i] = res[k]
		}
	}
	return out
}

func (m *MX) log() *slog.Logger { return orDefault(m.Logger).With(slog.String("transport", "mx")) }

func (m *MX) deliverDomain(ctx context.Context, d *policy.Delivery, domain string, rcpts []policy.Recipient) []policy.Reply {
	log := m.log().With(slog.String("domain", domain))
	if d.Tx != nil {
		log = log.With(slog.String("id", d.Tx.ID))
	}
	if domain == "" {
		return sameReply(len(rcpts), policy.Reply{Code: 550, Enhanced: "5.1.3", Text: "Recipient without a domain"})
	}
	hosts, fail := m.hosts(ctx, domain)
	if !fail.IsZero() {
		log.Info("no route to domain", slog.String("reply", fail.String()))
		return sameReply(len(rcpts), fail)
	}
	s := &session{hostname: m.Hostname, tlsMode: m.TLS, tlsConfig: m.TLSConfig, timeouts: m.Timeouts, log: log}
	if s.tlsMode == TLSImplicit {
		s.tlsMode = TLSRequired
	}
	port := m.Port
	if port == 0 {
		port = 25
	}
	limit := m.MaxAddresses
	if limit <= 0 {
		limit = 5
	}
	var (
		last            policy.Reply
		tried, notFound int
		tempLookup      bool
	)
	for _, h := range hosts {
		if tried >= limit || ctx.Err() != nil {
			break
		}
		addrs := []netip.Addr{h.ip}
		if !h.ip.IsValid() {
			ips, err := m.Resolver.LookupIPAddr(ctx, h.name)
			if err != nil || len(ips) == 0 {
				log.Info("MX host has no address", slog.String("host", h.name), slog.Any("error", err))
				if dnserr.IsNotFound(err) || err == nil {
					notFound++
				} else {
					tempLookup = true
				}
				continue
			}
			addrs = addrs[:0]
			for _, ip := range ips {
				if a, ok := netip.AddrFromSlice(ip.IP); ok {
					addrs = append(addrs, a.Unmap())
				}
			}
		}
		for _, ip := range addrs {
			if tried >= limit || ctx.Err() != nil {
				break
			}
			tried++
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
			o := s.deliver(ctx, m.Dial, "tcp", addr, h.name, d, rcpts, log.With(slog.String("host", h.name), slog.String("addr", addr)))
			if o.replies != nil {
				return o.replies
			}
			last = o.fail
		}
	}
	switch {
	case tried == 0 && tempLookup:
		return sameReply(len(rcpts), replyDNSTemp)
	case tried == 0 && notFound > 0:
		return sameReply(len(rcpts), replyNoHostAddress)
	case ctx.Err() != nil:
		return sameReply(len(rcpts), policy.Reply{Code: 451, Enhanced: "4.4.7", Text: "Delivery attempt cancelled: " + ctx.Err().Error()})
	case last.IsZero():
		return sameReply(len(rcpts), replyNoAnswer)
	}
	// The last host's failure: connection refused (4.4.1), a 554
	// greeting, TLS required but not offered (4.7.4), ...
	return sameReply(len(rcpts), last)
}

// hosts returns the hosts to try for domain, or the reply that fails every
// recipient.
func (m *MX) hosts(ctx context.Context, domain string) ([]mxHost, policy.Reply) {
	if strings.HasPrefix(domain, "[") {
		lit := strings.TrimSuffix(strings.TrimPrefix(domain, "["), "]")
		lit = strings.TrimPrefix(strings.ToLower(lit), "ipv6:")
		ip, err := netip.ParseAddr(lit)
		if err != nil {
			return nil, policy.Reply{Code: 550, Enhanced: "5.1.2", Text: "Bad address literal"}
		}
		return []mxHost{{ip: ip.Unmap()}}, policy.Reply{}
	}
	mxs, err := m.Resolver.LookupMX(ctx, domain+".")
	if err != nil && len(mxs) == 0 {
		if !dnserr.IsNotFound(err) {
			return nil, replyDNSTemp
		}
	}
	for _, mx := range mxs {
		if mx.Host == "." || mx.Host == "" {
			return nil, replyNullMX
		}
	}
	if len(mxs) == 0 {
		// RFC 5321 5.1: no MX, the domain itself is the host, if it has
		// an address.
		ips, err := m.Resolver.LookupIPAddr(ctx, domain+".")
		if err != nil || len(ips) == 0 {
			if err == nil || dnserr.IsNotFound(err) {
				return nil, replyNoDomain
			}
			return nil, replyDNSTemp
		}
		return []mxHost{{name: domain}}, policy.Reply{}
	}
	mxs = slices.Clone(mxs)
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	hosts := make([]mxHost, 0, len(mxs))
	for _, mx := range mxs {
		hosts = append(hosts, mxHost{name: strings.TrimSuffix(mx.Host, ".")})
	}
	return hosts, policy.Reply{}
}
