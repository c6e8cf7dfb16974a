package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Address is a parsed mailbox: a local part and a domain. The zero Address is
// the null reverse-path "<>".
//
// The domain is lower-cased, in IDNA A-label form, without a trailing dot; a
// domain literal keeps its brackets ("[192.0.2.1]", "[ipv6:2001:db8::1]").
// The local part is kept as the mailbox owner wrote it, unquoted; String
// quotes it again when it needs quoting, so an address survives a round trip
// through go-smtp, which strips the quotes of `"a@b"@example.com`.
type Address struct {
	Local  string
	Domain string
}

// Errors returned by ParseAddress, for errors.Is.
var (
	ErrAddressSyntax = errors.New("policy: bad address syntax")
	ErrAddressLength = errors.New("policy: address too long")
)

// Limits from RFC 5321 section 4.5.3.1.
const (
	maxLocalLen   = 64
	maxDomainLen  = 255
	maxAddressLen = 256
)

var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// ParseAddress parses a path as it appears in MAIL FROM or RCPT TO, with or
// without angle brackets. "<>" and "" give the null address. A source route
// ("@a.example,@b.example:user@c.example") is accepted and ignored as RFC 5321
// section 4.1.1.3 requires, so the address is the final mailbox. A bare
// "postmaster" (any case) is accepted without a domain (RFC 5321 section
// 4.1.1.3). The split between local part and domain is at the last "@", so
// a local part that contained a quoted "@" stays whole.
func ParseAddress(s string) (Address, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "<") {
		if !strings.HasSuffix(s, ">") {
			return Address{}, fmt.Errorf("%w: unbalanced angle brackets", ErrAddressSyntax)
		}
		s = s[1 : len(s)-1]
	}
	if s == "" {
		return Address{}, nil
	}
	if len(s) > maxAddressLen {
		return Address{}, ErrAddressLength
	}
	if strings.HasPrefix(s, "@") {
		// Source route: everything up to the first colon outside quotes.
		i := strings.IndexByte(s, ':')
		if i < 0 {
			return Address{}, fmt.Errorf("%w: source route without mailbox", ErrAddressSyntax)
		}
		for _, hop := range strings.Split(s[:i], ",") {
			if !strings.HasPrefix(hop, "@") {
				return Address{}, fmt.Errorf("%w: bad source route", ErrAddressSyntax)
			}
			if _, err := normalizeDomain(hop[1:]); err != nil {
				return Address{}, err
			}
		}
		s = s[i+1:]
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		if strings.EqualFold(s, "postmaster") {
			return Address{Local: s}, nil
		}
		return Address{}, fmt.Errorf("%w: no domain", ErrAddressSyntax)
	}
	local, err := parseLocal(s[:at])
	if err != nil {
		return Address{}, err
	}
	domain, err := normalizeDomain(s[at+1:])
	if err != nil {
		return Address{}, err
	}
	a := Address{Local: local, Domain: domain}
	if a.stringLen() > maxAddressLen {
		// Quoting again (go-smtp's stripped "a@b"@x) or the A-label can
		// make the printed form longer than what was received; what we
		// print must parse back.
		return Address{}, ErrAddressLength
	}
	return a, nil
}

// stringLen returns len(a.String()) without building it.
func (a Address) stringLen() int {
	n := len(a.Local)
	if !isDotAtom(a.Local) {
		n += 2 + strings.Count(a.Local, `"`) + strings.Count(a.Local, `\`)
	}
	if a.Domain != "" {
		n += 1 + len(a.Domain)
	}
	return n
}

// MustParseAddress is ParseAddress for constants in tests and examples; it
// panics on error.
func MustParseAddress(s string) Address {
	a, err := ParseAddress(s)
	if err != nil {
		panic(err)
	}
	return a
}

func parseLocal(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty local part", ErrAddressSyntax)
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		var b strings.Builder
		q := s[1 : len(s)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				i++
				if i == len(q) {
					return "", fmt.Errorf("%w: dangling backslash", ErrAddressSyntax)
				}
				if q[i] < 0x20 || q[i] == 0x7f {
					// quoted-pairSMTP is a backslash and a printable
					// character (RFC 5321 section 4.1.2).
					return "", fmt.Errorf("%w: bad character in quoted local part", ErrAddressSyntax)
				}
				b.WriteByte(q[i])
			case c == '"' || c < 0x20 || c == 0x7f:
				return "", fmt.Errorf("%w: bad character in quoted local part", ErrAddressSyntax)
			default:
				b.WriteByte(c)
			}
		}
		s = b.String()
	} else {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c == 0x7f || c == ' ' || c == '\\' || c == '"' {
				return "", fmt.Errorf("%w: bad character in local part", ErrAddressSyntax)
			}
		}
	}
	if s == "" || len(s) > maxLocalLen*4 || !utf8.ValidString(s) {
		return "", fmt.Errorf("%w: bad local part", ErrAddressSyntax)
	}
	if len(s) > maxLocalLen && !hasNonASCII(s) {
		return "", ErrAddressLength
	}
	return s, nil
}

func hasNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return true
		}
	}
	return false
}

// NormalizeDomain returns d lower-cased, in A-label form, without a trailing
// dot. Rules that compare domains should compare normalized forms only.
func NormalizeDomain(d string) (string, error) { return normalizeDomain(d) }

func normalizeDomain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return "", fmt.Errorf("%w: bad domain literal", ErrAddressSyntax)
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(strings.ToLower(lit), "ipv6:"); ok {
			ip, err := netip.ParseAddr(v6)
			if err != nil || !ip.Is6() || ip.Zone() != "" {
				return "", fmt.Errorf("%w: bad IPv6 literal", ErrAddressSyntax)
			}
			return "[ipv6:" + ip.String() + "]", nil
		}
		ip, err := netip.ParseAddr(lit)
		if err != nil || !ip.Is4() {
			return "", fmt.Errorf("%w: bad address literal", ErrAddressSyntax)
		}
		return "[" + ip.String() + "]", nil
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", fmt.Errorf("%w: empty domain", ErrAddressSyntax)
	}
	if hasNonASCII(d) {
		a, err := idnaProfile.ToASCII(d)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrAddressSyntax, err)
		}
		d = a
	}
	d = strings.ToLower(d)
	if len(d) > maxDomainLen {
		return "", ErrAddressLength
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("%w: bad domain label %q", ErrAddressSyntax, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%w: bad character in domain", ErrAddressSyntax)
			}
		}
	}
	return d, nil
}

// IsNull reports whether a is the null reverse-path "<>".
func (a Address) IsNull() bool { return a.Local == "" && a.Domain == "" }

// IsLiteral reports whether the domain is an address literal such as
// "[192.0.2.1]". Such a domain is never a local domain by name.
func (a Address) IsLiteral() bool { return strings.HasPrefix(a.Domain, "[") }

// String returns the address in SMTP form, without angle brackets, quoting
// the local part when it is not a dot-atom. The null address prints as "".
func (a Address) String() string {
	if a.IsNull() {
		return ""
	}
	local := a.Local
	if !isDotAtom(local) {
		local = quoteLocal(local)
	}
	if a.Domain == "" {
		return local
	}
	return local + "@" + a.Domain
}

// Path returns the address in angle brackets, as used in MAIL FROM, RCPT TO
// and Return-Path: "<user@example.com>", or "<>" for the null address.
func (a Address) Path() string { return "<" + a.String() + ">" }

// Equal reports whether two addresses name the same mailbox. Domains are
// compared normalized; local parts exactly, as RFC 5321 leaves their case to
// the receiving host, except that "postmaster" matches in any case.
func (a Address) Equal(b Address) bool {
	if a.Domain != b.Domain {
		return false
	}
	if strings.EqualFold(a.Local, "postmaster") && strings.EqualFold(b.Local, "postmaster") {
		return true
	}
	return a.Local == b.Local
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if s[i-1] == '.' {
				return false
			}
			continue
		}
		if !isAtext(c) {
			return false
		}
	}
	return true
}

func quoteLocal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
