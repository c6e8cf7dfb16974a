package relay

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// Replies given by the relay rules.
var (
	// replyRelayDenied refuses a recipient outside the local domains from a
	// client that may not relay.
	replyRelayDenied = policy.Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}
	// replySpoofedSender refuses a sender address in a local domain from a
	// client outside the internal networks that has not authenticated.
	replySpoofedSender = policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "Sender address in a local domain requires authentication"}
)

// Domains is a set of local domains, normalized as policy.Address.Domain is
// (lower case, A-label, no trailing dot). The zero Domains is empty. Build
// one with NewDomains and share it: it is read-only after construction and
// safe for concurrent use.
type Domains struct{ set map[string]struct{} }

// NewDomains returns the set of the given domains. Each is normalized with
// policy.NormalizeDomain; a name that does not normalize (bad syntax) is
// kept lower-cased and can never match, since addresses are always
// normalized. Address literals ("[192.0.2.1]") are ignored: an IP literal is
// never a local domain by name.
func NewDomains(domains ...string) Domains {
	d := Domains{set: make(map[string]struct{}, len(domains))}
	for _, name := range domains {
		name = strings.TrimSpace(name)
		if name == "" || strings.HasPrefix(name, "[") {
			continue
		}
		n, err := policy.NormalizeDomain(name)
		if err != nil {
			n = strings.ToLower(name)
		}
		d.set[n] = struct{}{}
	}
	return d
}

// Contains reports whether the normalized domain name is in the set. The
// comparison is exact: a subdomain or a look-alike ("xlocal",
// "local.other.test") is not the domain.
func (d Domains) Contains(domain string) bool {
	_, ok := d.set[domain]
	return ok
}

// Has reports whether addr is a mailbox of a local domain: its domain is
// one of the set, or it is the bare "postmaster" RFC 5321 section 4.1.1.3
// requires every server to accept. An address literal is never local; the
// null address is not either.
func (d Domains) Has(addr policy.Address) bool {
	if addr.Domain == "" {
		return addr.Local != "" && strings.EqualFold(addr.Local, "postmaster")
	}
	if addr.IsLiteral() {
		return false
	}
	return d.Contains(addr.Domain)
}

// Len returns the number of domains in the set.
func (d Domains) Len() int { return len(d.set) }

// InDomain reports whether addr belongs to one of domains, compared exactly
// and case-insensitively after normalization (see Domains.Has). Rules that
// run per message should build a Domains once instead.
func InDomain(addr policy.Address, domains ...string) bool {
	return NewDomains(domains...).Has(addr)
}

// InNetworks reports whether ip is inside one of nets. IPv4-mapped IPv6
// addresses (::ffff:192.0.2.1) are unmapped first, and a zone is ignored, so
// a client reaching a dual-stack listener matches its IPv4 prefixes; an
// IPv4-mapped prefix matches the IPv4 addresses it maps. An invalid ip is in
// no network.
func InNetworks(ip netip.Addr, nets []netip.Prefix) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.WithZone("").Unmap()
	for _, p := range nets {
		if p.Contains(ip) {
			return true
		}
		if ip.Is4() && p.Addr().Is4In6() && p.Contains(netip.AddrFrom16(ip.As16())) {
			return true
		}
	}
	return false
}

// ParsePrefixes parses a list of networks separated by commas or white
// space, such as "192.168.1.0/24, 10.0.0.1 2001:db8::/32". A bare address
// is a single-host prefix (/32 or /128). IPv4-mapped IPv6 prefixes
// (::ffff:10.0.0.0/104) are turned into their IPv4 form. Prefixes are
// masked ("10.1.2.3/8" is 10.0.0.0/8). An empty string gives no prefixes.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	out := make([]netip.Prefix, 0, len(fields))
	for _, f := range fields {
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			p, err = netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("relay: bad network %q: %w", f, err)
			}
		} else {
			ip, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("relay: bad network %q: %w", f, err)
			}
			if ip.Zone() != "" {
				return nil, fmt.Errorf("relay: bad network %q: zones are not allowed", f)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("relay: bad network %q: IPv4-mapped prefix shorter than /96", f)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Policy is the relay policy the rules apply: which client networks are
// trusted to relay, and which domains are ours. Build it with NewPolicy, or
// use the CheckRelay, CheckMailRelay and CheckRcptRelay shortcuts.
type Policy struct {
	// Internal lists the networks whose clients may relay anywhere without
	// authenticating (mynetworks). Behind a proxy or a NAT gateway every
	// client may look internal: list only addresses you control.
	Internal []netip.Prefix
	// Local is the set of domains we receive mail for.
	Local Domains
}

// NewPolicy returns the relay policy for the internal networks and local
// domains.
func NewPolicy(internal []netip.Prefix, localDomains ...string) *Policy {
	return &Policy{Internal: append([]netip.Prefix(nil), internal...), Local: NewDomains(localDomains...)}
}

// internalClient reports whether the transaction's client is in one of the
// internal networks.
func (p *Policy) internalClient(tx *policy.Transaction) bool {
	return tx != nil && tx.Conn != nil && InNetworks(tx.Conn.Remote.Addr(), p.Internal)
}

// LocalAccount reports whether the authenticated identity user is an
// account of a local domain: it parses as an address whose domain is local.
// A bare user name without a domain is not, so that an identity from an
// authenticator that knows foreign accounts never grants relaying.
func (p *Policy) LocalAccount(user string) bool {
	if user == "" || !strings.Contains(user, "@") {
		return false
	}
	a, err := policy.ParseAddress(user)
	if err != nil || a.Domain == "" {
		return false
	}
	return p.Local.Has(a)
}

// mayRelay reports whether the client may send to any domain: it is
// internal, or authenticated as an account of a local domain.
func (p *Policy) mayRelay(tx *policy.Transaction) bool {
	if p.internalClient(tx) {
		return true
	}
	return tx != nil && tx.Conn != nil && tx.Conn.Authenticated() && p.LocalAccount(tx.Conn.AuthUser)
}

// spoofed reports whether the sender claims a local domain although the
// client is neither internal nor authenticated.
func (p *Policy) spoofed(tx *policy.Transaction) bool {
	if tx == nil || tx.From.IsNull() || !p.Local.Has(tx.From) {
		return false
	}
	if p.internalClient(tx) {
		return false
	}
	return tx.Conn == nil || !tx.Conn.Authenticated()
}

// MailRule returns the mail-stage half: a sender address in a local domain
// is refused with 550 5.7.1 when the client is outside the internal
// networks and has not authenticated (someone spoofing our own domain).
// Any other sender, and the null sender, gets Next, so later mail rules
// (SPF) still run. An authenticated client may use any sender here; whether
// it may relay is decided per recipient.
func (p *Policy) MailRule() policy.MailRule {
	return func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		if p.spoofed(tx) {
			return deny(replySpoofedSender)
		}
		return policy.Next()
	}
}

// RcptRule returns the rcpt-stage half: Accept when the recipient is in a
// local domain (or is the bare postmaster), when the client is in an
// internal network, or when it authenticated as an account of a local
// domain; otherwise Deny 554 5.7.1 "Relay access denied".
//
// Accept ends the rcpt stage: register rules that must see every recipient
// (mailbox existence, quotas) before this one.
func (p *Policy) RcptRule() policy.RcptRule {
	return func(_ context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		if p.Local.Has(rcpt.Addr) || p.mayRelay(tx) {
			return policy.Accept()
		}
		return deny(replyRelayDenied)
	}
}

// Rule returns both halves as one rcpt rule: the spoofed-sender check of
// MailRule (refusing every recipient of such a transaction with 550 5.7.1),
// then RcptRule.
func (p *Policy) Rule() policy.RcptRule {
	rcpt := p.RcptRule()
	return func(ctx context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
		if p.spoofed(tx) {
			return deny(replySpoofedSender)
		}
		return rcpt(ctx, tx, r)
	}
}

func deny(r policy.Reply) policy.Verdict { return policy.Deny(r.Code, r.Enhanced, r.Text) }

// CheckRelay is the anti-open-relay rule for the rcpt stage, in one piece.
// From a client outside internal that has not authenticated as an account
// of a local domain it accepts only recipients in localDomains; clients in
// internal, and authenticated local accounts, may send anywhere. A
// transaction whose sender claims a local domain from outside without
// authentication has every recipient refused with 550 5.7.1; any other
// refused recipient gets 554 5.7.1 "Relay access denied".
//
// Domains match exactly after normalization: "user@Local." is local,
// "user@xlocal", "user@local.other.test" and "user@[127.0.0.1]" are not. The
// local part is never interpreted: "user%other.test@local" and
// "other.test!user@local" are local mailboxes with a literal local part,
// which the relay transports never route by (they route by domain only).
// Source routes are dropped by the parser, so "@local:user@other.test" is a
// recipient at other.test.
func CheckRelay(internal []netip.Prefix, localDomains ...string) policy.RcptRule {
	return NewPolicy(internal, localDomains...).Rule()
}

// CheckMailRelay is the mail-stage half of the split form: it refuses with
// 550 5.7.1 a sender in a local domain from a client outside internal that
// has not authenticated. See Policy.MailRule.
func CheckMailRelay(internal []netip.Prefix, localDomains ...string) policy.MailRule {
	return NewPolicy(internal, localDomains...).MailRule()
}

// CheckRcptRelay is the rcpt-stage half of the split form: see
// Policy.RcptRule.
func CheckRcptRelay(internal []netip.Prefix, localDomains ...string) policy.RcptRule {
	return NewPolicy(internal, localDomains...).RcptRule()
}
