// Package dnstest runs a real, authoritative DNS server on loopback for
// tests of code that does DNS: SPF, DKIM, DMARC, MX delivery, reverse
// lookups.
//
// The project's rule is that no test ever queries the system resolver.
// Production code takes an injectable *net.Resolver; tests hand it the one
// returned by [Server.Resolver], whose Dial always reaches this server, so
// the real Go stub resolver (message encoding, EDNS0, truncation and TCP
// fallback, error classification) is exercised end to end.
//
// A zone is given as zone-file lines, one record each (a missing TTL
// defaults to 300 and a missing class to IN; owner names are taken as
// absolute):
//
//	srv := dnstest.New(t,
//		`example.com. TXT "v=spf1 ip4:192.0.2.1 -all"`,
//		`example.com. MX 10 mail.example.com.`,
//		`mail.example.com. A 127.0.0.1`,
//		`1.2.0.192.in-addr.arpa. PTR mail.example.com.`,
//	)
//	r := srv.Resolver()
//
// Behaviour that matters for mail authentication libraries, which decide
// "temporary" versus "permanent" failure from the error the resolver
// returns:
//
//   - A name with no records at all (and nothing below it) answers
//     NXDOMAIN: *net.DNSError with IsNotFound=true.
//   - A name that exists but has no record of the asked type answers
//     NOERROR with an empty answer (NODATA): Go reports that as a
//     *net.DNSError with IsNotFound=true too.
//   - [Server.Fail] with dns.RcodeServerFailure makes Go return a
//     *net.DNSError with IsTemporary=true ("server misbehaving"); other
//     rcodes (e.g. REFUSED) give IsTemporary=false.
//   - [Server.Timeout] drops queries; with a context deadline Go returns a
//     *net.DNSError with IsTimeout=true and IsTemporary=true, and
//     errors.Is(err, context.DeadlineExceeded) holds.
//
// Names are case-insensitive. CNAME chains inside the zone are followed
// for other query types, `*.` wildcards are synthesized (RFC 4592: only for
// names that do not exist), TXT strings longer than 255 bytes are split
// into several character-strings as DKIM keys need (Go's LookupTXT joins
// them again), and UDP answers larger than the client's EDNS0 buffer are
// truncated with TC so the client retries over TCP, which is served on the
// same port.
//
// Go's stub resolver still reads /etc/resolv.conf for its search list,
// ndots, attempts and timeout (only the server address is overridden), so
// use fully-qualified names with a trailing dot when exact query counts
// matter, and expect SERVFAIL to be retried (several queries per lookup).
// Host lookups (LookupHost, LookupIP, LookupAddr) also consult /etc/hosts
// first, so avoid names and addresses listed there ("localhost",
// 127.0.0.1, ::1): a PTR for 127.0.0.1 would be answered from /etc/hosts.
//
// This package is for tests only; production code must not import it.
package dnstest
