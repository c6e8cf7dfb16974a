package relay

import (
	"context"
	"net/netip"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// HeloOptions configure CheckHelo. The zero value checks syntax only.
type HeloOptions struct {
	// Names are names that are ours: our host names ("mx.example.com")
	// and, often claimed by spam software, our domains. A client outside
	// Internal that has not authenticated and says HELO with one of them
	// is refused. Compared case-insensitively, without a trailing dot.
	Names []string
	// Addrs are addresses that are ours; a HELO with an address literal
	// of one of them ("[192.0.2.25]") is refused likewise. The address the
	// client connected to is always ours.
	Addrs []netip.Addr
	// Internal lists networks whose clients are not checked at all.
	Internal []netip.Prefix
	// AllowSingleLabel accepts a valid name without a dot ("laptop"),
	// which Postfix's reject_non_fqdn_helo_hostname refuses. Mail clients
	// on a submission port send such names; servers do not.
	AllowSingleLabel bool
}

// heloClass is what heloSyntax finds of a HELO argument.
type heloClass uint8

const (
	heloInvalid heloClass = iota // neither a host name nor an address literal
	heloNotFQDN                  // a valid name without a dot
	heloName                     // a valid name with a dot
	heloLiteral                  // a valid address literal
)

// heloSyntax classifies a HELO argument. A name is labels of letters,
// digits, hyphens and underscores (which Windows hosts use), each 1 to
// 63 long, not starting or ending with a hyphen, 253 at most in all, with
// one trailing dot allowed and a last label that is not all digits (a
// bare IP address is not a name: it belongs in brackets). An address
// literal is "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 section
// 4.1.3). It returns the literal's address too.
func heloSyntax(s string) (heloClass, netip.Addr) {
	if strings.HasPrefix(s, "[") {
		if !strings.HasSuffix(s, "]") {
			return heloInvalid, netip.Addr{}
		}
		inner := s[1 : len(s)-1]
		v6 := len(inner) >= 5 && strings.EqualFold(inner[:5], "IPv6:")
		if v6 {
			inner = inner[5:]
		}
		ip, err := netip.ParseAddr(inner)
		if err != nil || ip.Zone() != "" || ip.Is4() == v6 {
			return heloInvalid, netip.Addr{}
		}
		return heloLiteral, ip
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return heloInvalid, netip.Addr{}
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return heloInvalid, netip.Addr{}
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return heloInvalid, netip.Addr{}
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return heloInvalid, netip.Addr{}
	}
	if len(labels) == 1 {
		return heloNotFQDN, netip.Addr{}
	}
	return heloName, netip.Addr{}
}

// CheckHelo returns a helo rule that refuses, from a client outside
// opts.Internal:
//
//   - an argument that is neither a host name nor an address literal:
//     "501 5.5.2 <arg>: Helo command rejected: Invalid name" (Postfix's
//     reject_invalid_helo_hostname);
//   - a name without a dot, unless AllowSingleLabel: "504 5.5.2 <arg>:
//     Helo command rejected: need fully-qualified hostname" (Postfix's
//     reject_non_fqdn_helo_hostname);
//   - unless the client has authenticated (a second EHLO after AUTH), a
//     name or address that is ours: "550 5.7.1 <arg>: Helo command
//     rejected: that is our own name". Nobody outside is us; spam
//     software claims to be its target.
//
// Anything else gets Next. The rule runs before AUTH: a submission port
// whose mail clients send names without a dot needs AllowSingleLabel, or
// a check of Conn.Listener around the rule.
func CheckHelo(opts HeloOptions) policy.HeloRule {
	names := make(map[string]struct{}, len(opts.Names))
	for _, n := range opts.Names {
		names[strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))] = struct{}{}
	}
	addrs := make(map[netip.Addr]struct{}, len(opts.Addrs))
	for _, a := range opts.Addrs {
		addrs[a.Unmap().WithZone("")] = struct{}{}
	}
	internal := append([]netip.Prefix(nil), opts.Internal...)
	allowSingle := opts.AllowSingleLabel
	return func(_ context.Context, c *policy.Conn, helo string) policy.Verdict {
		if c != nil && InNetworks(c.Remote.Addr(), internal) {
			return policy.Next()
		}
		class, ip := heloSyntax(helo)
		quoted := "<" + sanitizeHelo(helo) + ">"
		switch {
		case class == heloInvalid:
			return policy.Deny(501, "5.5.2", quoted+": Helo command rejected: Invalid name")
		case class == heloNotFQDN && !allowSingle:
			return policy.Deny(504, "5.5.2", quoted+": Helo command rejected: need fully-qualified hostname")
		}
		if c != nil && c.Authenticated() {
			return policy.Next()
		}
		ours := false
		if class == heloLiteral {
			ip = ip.Unmap()
			_, ours = addrs[ip]
			ours = ours || (c != nil && c.Local.Addr().Unmap().WithZone("") == ip)
		} else {
			_, ours = names[strings.ToLower(strings.TrimSuffix(helo, "."))]
		}
		if ours {
			return policy.Deny(550, "5.7.1", quoted+": Helo command rejected: that is our own name")
		}
		return policy.Next()
	}
}

// sanitizeHelo makes a HELO argument fit to quote in a reply: printable
// ASCII only, 64 bytes at most.
func sanitizeHelo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 64; i++ {
		if c := s[i]; c > ' ' && c < 0x7f && c != '<' && c != '>' {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}
