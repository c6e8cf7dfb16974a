package policytest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// Resolver is a fake DNS for testing rules that take a policy.Resolver
// (SPF, DKIM, DMARC, DNSBL checks of one's own), without a DNS server. Its
// records are given in maps, and it answers as *net.Resolver does, down to
// the fields of the *net.DNSError it returns, so code that tells a
// temporary failure from a permanent one behaves as it would in
// production:
//
//	r := &policytest.Resolver{
//		TXT: map[string][]string{"example.com": {"v=spf1 ip4:192.0.2.25 -all"}},
//		MX:  map[string][]*net.MX{"example.com": {{Host: "mx.example.com", Pref: 10}}},
//		IP:  map[string][]string{"mx.example.com": {"192.0.2.25", "2001:db8::25"}},
//		PTR: map[string][]string{"192.0.2.25": {"mx.example.com"}},
//
//		ServFail: []string{"broken.example"},
//	}
//
// Names are case-insensitive and may be written with or without a
// trailing dot. A PTR key is an IP address in any form netip.ParseAddr
// accepts. Answers are fresh copies: a rule may change them.
//
// Lookups answer as follows:
//
//   - LookupTXT, LookupMX, LookupIPAddr and LookupAddr return the records
//     of TXT, MX, IP and PTR. MX and PTR hosts come with a trailing dot,
//     MX records sorted by preference (equal ones kept in the given order,
//     where net shuffles them); addresses in the given order (net sorts
//     them by RFC 6724); IPv4 addresses as 4-byte net.IPs.
//   - LookupIPAddr of an IP address returns it without a lookup.
//   - A name with no records of the asked type (not in the map, or an
//     empty list) fails with IsNotFound and Err "no such host", as net
//     reports both NXDOMAIN and NODATA. The errors of LookupAddr name the
//     in-addr.arpa or ip6.arpa name, as net's do.
//   - LookupAddr of something that is not an IP address fails with Err
//     "unrecognized address".
//   - A name in ServFail fails every lookup with IsTemporary and Err
//     "server misbehaving" (a SERVFAIL answer); a name in Timeout fails at
//     once with IsTimeout and IsTemporary, and errors.Is(err,
//     context.DeadlineExceeded) holds, as when a resolver's timeout passes.
//     For LookupAddr they hold IP addresses.
//   - A context already ended fails the lookup as net does: "i/o timeout"
//     with IsTimeout and IsTemporary for a passed deadline, "operation was
//     canceled" for a cancellation (temporary except for LookupIPAddr),
//     with errors.Is reaching ctx.Err().
//
// An entry of IP or PTR that cannot be parsed, or two keys of one map
// naming the same domain, is a mistake in the test: the lookup panics
// saying which.
//
// The zero value answers "no such host" to everything. A Resolver is safe
// for concurrent use; its fields must not be changed once it is in use.
type Resolver struct {
	TXT map[string][]string  // name -> TXT records, each one string
	MX  map[string][]*net.MX // name -> MX records
	IP  map[string][]string  // name -> A and AAAA records, "192.0.2.1", "2001:db8::1"
	PTR map[string][]string  // IP address -> names

	ServFail []string // names (for LookupAddr, addresses) whose lookups fail temporarily
	Timeout  []string // names (for LookupAddr, addresses) whose lookups time out
}

var _ policy.Resolver = (*Resolver)(nil)

// LookupTXT returns the TXT records of name.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if err := r.fail(ctx, name, name, true); err != nil {
		return nil, err
	}
	txts := records(r.TXT, name)
	if len(txts) == 0 {
		return nil, notFound(name)
	}
	return slices.Clone(txts), nil
}

// LookupMX returns the MX records of name, sorted by preference.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if err := r.fail(ctx, name, name, true); err != nil {
		return nil, err
	}
	var mxs []*net.MX
	for _, mx := range records(r.MX, name) {
		if mx != nil {
			mxs = append(mxs, &net.MX{Host: absolute(mx.Host), Pref: mx.Pref})
		}
	}
	if len(mxs) == 0 {
		return nil, notFound(name)
	}
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	return mxs, nil
}

// LookupIPAddr returns the addresses of host; an IP address is returned
// as is.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if host == "" {
		return nil, notFound(host)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []net.IPAddr{{IP: net.IP(ip.AsSlice()).To16(), Zone: ip.Zone()}}, nil
	}
	if err := r.fail(ctx, host, host, false); err != nil {
		return nil, err
	}
	var addrs []net.IPAddr
	for _, s := range records(r.IP, host) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			panic(fmt.Sprintf("policytest.Resolver: IP[%q]: %q is not an IP address", host, s))
		}
		addrs = append(addrs, net.IPAddr{IP: net.IP(ip.Unmap().AsSlice()), Zone: ip.Zone()})
	}
	if len(addrs) == 0 {
		return nil, notFound(host)
	}
	return addrs, nil
}

// LookupAddr returns the names of the IP address addr, each with a
// trailing dot.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	ip = ip.Unmap().WithZone("")
	arpa := reverseName(ip)
	if err := r.fail(ctx, arpa, ip.String(), true); err != nil {
		return nil, err
	}
	var names []string
	for k, v := range r.PTR {
		kip, err := netip.ParseAddr(k)
		if err != nil {
			panic(fmt.Sprintf("policytest.Resolver: PTR key %q is not an IP address", k))
		}
		if kip.Unmap().WithZone("") == ip {
			for _, n := range v {
				names = append(names, absolute(n))
			}
		}
	}
	if len(names) == 0 {
		return nil, notFound(arpa)
	}
	return names, nil
}

// fail returns the error a lookup of key gets before any record is read:
// an ended context, or key listed in ServFail or Timeout. name is what the
// error names. net sets IsTemporary on a cancelled lookup except in
// LookupIPAddr (cancelTemp).
func (r *Resolver) fail(ctx context.Context, name, key string, cancelTemp bool) error {
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return timeout(name, err)
		}
		return &net.DNSError{Err: "operation was canceled", Name: name, IsTemporary: cancelTemp, UnwrapErr: err}
	}
	if listed(r.Timeout, key) {
		return timeout(name, context.DeadlineExceeded)
	}
	if listed(r.ServFail, key) {
		return &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	return nil
}

func timeout(name string, err error) *net.DNSError {
	return &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true, IsTemporary: true, UnwrapErr: err}
}

func notFound(name string) *net.DNSError {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// canonical is the form names are compared in.
func canonical(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// absolute adds the trailing dot net gives names in answers.
func absolute(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// records returns the entry of m for name. Two keys naming the same domain
// are a mistake in the test.
func records[T any](m map[string][]T, name string) []T {
	if v, ok := m[name]; ok && canonical(name) == name {
		return v
	}
	want := canonical(name)
	var found string
	var out []T
	for k, v := range m {
		if canonical(k) != want {
			continue
		}
		if found != "" {
			panic(fmt.Sprintf("policytest.Resolver: keys %q and %q name the same domain", found, k))
		}
		found, out = k, v
	}
	return out
}

// listed reports whether names holds key: a domain name, or an IP address
// (compared as addresses).
func listed(names []string, key string) bool {
	ip, ipErr := netip.ParseAddr(key)
	for _, n := range names {
		if canonical(n) == canonical(key) {
			return true
		}
		if ipErr == nil {
			if nip, err := netip.ParseAddr(n); err == nil && nip.Unmap().WithZone("") == ip {
				return true
			}
		}
	}
	return false
}

// reverseName is the in-addr.arpa or ip6.arpa name of ip, with a trailing
// dot, as net names a failed reverse lookup.
func reverseName(ip netip.Addr) string {
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			fmt.Fprintf(&b, "%d.", a[i])
		}
		b.WriteString("in-addr.arpa.")
		return b.String()
	}
	const hex = "0123456789abcdef"
	a := ip.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa.")
	return b.String()
}
