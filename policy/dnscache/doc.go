// Package dnscache is a caching DNS stub resolver for mail servers. A
// *Resolver satisfies policy.Resolver, so it drops in wherever the SDK
// takes one: SPF (through auth.Resolver), DKIM and DMARC TXT lookups,
// relay.MX, and the SMTP server's reverse lookups.
//
// Every production MTA resolves through a cache (Postfix through a local
// caching resolver, vSMTP through hickory-dns's TTL cache): mail brings the
// same SPF, DKIM and DMARC records again and again. Go's net.Resolver keeps
// nothing and opens a socket per query; this resolver keeps each answer
// for its TTL, and concurrent lookups of the same name and type share one
// query.
//
//	r := dnscache.New(dnscache.Config{Servers: []string{"127.0.0.1:53"}}) // none: those of /etc/resolv.conf
//	chain.Mail("spf", auth.CheckSPF(auth.SPFOptions{Identity: auth.SPFBoth, Mode: auth.SPFSoft, Resolver: r}))
//
// It answers as net.Resolver does, so the libraries that classify DNS
// errors behave the same: every error is a *net.DNSError; NXDOMAIN and
// NODATA (the name exists, without records of the type) have IsNotFound
// set; timeouts have IsTimeout and IsTemporary; SERVFAIL and REFUSED
// have IsTemporary (net calls REFUSED permanent; for SPF, RFC 7208 section
// 4.4 makes it a temperror). TXT records come one string per record with
// their character-strings joined; MX records sorted by preference, equal
// ones shuffled; names with a trailing dot. LookupIPAddr asks for A and
// AAAA at once and fails only when both fail.
//
// Differences from net.Resolver: names are always taken as fully
// qualified (no search list, no ndots), /etc/hosts is not read, and
// LookupIPAddr returns IPv4 addresses before IPv6 rather than in RFC 6724
// order.
//
// Queries go over UDP with EDNS0 (1232-byte buffer) and are asked again
// over TCP when the answer is truncated; each query has a random ID, and a
// reply must carry that ID and the question asked. CNAME chains in the
// answer are followed, and the target is asked for when a server gave the
// alias alone. Servers are tried in order, two rounds.
//
// Caching: a positive answer is kept for the smallest TTL of the records
// and CNAMEs it used, at most [Config.MaxTTL]; a negative answer (NXDOMAIN,
// NODATA) for the smaller of its SOA record's TTL and MINIMUM field (RFC
// 2308), at most [Config.MaxNegativeTTL], and not at all when the reply has
// no SOA. SERVFAIL, REFUSED, timeouts and network errors are never kept.
// Expired answers are never served. The cache holds at most
// [Config.MaxEntries] answers, dropping the least recently used.
//
// A query shared by several lookups is not canceled when the lookup that
// started it gives up: it runs to its own timeout ([Config.Timeout]) so
// the others, and the cache, get the answer. Each lookup still returns
// when its own context ends.
//
// # Configuration and logging
//
// New takes a Config: exported fields whose zero values are documented
// defaults (the servers of /etc/resolv.conf, 5 s per query, 10,000
// answers, TTLs capped at 1 h and 5 min). New copies it; a Resolver's
// configuration cannot change afterwards. Config.Logger receives failed
// queries at debug level and a missing server list at warn level; a nil
// Logger means slog.Default().
package dnscache
