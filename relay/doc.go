// Package relay holds the anti-open-relay rules, the anti-abuse rules
// (DNS lists, rate limits, greylisting, HELO checks) and the outbound
// transports of mtakit.
//
// # Relay control
//
// CheckRelay is the rcpt rule a mail server registers so that it is never an
// open relay: a client outside the internal networks may only send to the
// local domains, unless it authenticated as an account of a local domain;
// internal clients may send anywhere. CheckMailRelay and CheckRcptRelay are
// the same policy split over the mail and rcpt stages; Policy gives both
// from one configuration.
//
//	internal, _ := relay.ParsePrefixes("127.0.0.0/8, ::1, 192.168.1.0/24")
//	chain.Rcpt("relay", relay.CheckRelay(internal, "example.com"))
//
// Local domains match exactly after normalization (lower case, A-label, no
// trailing dot). The relay tricks get these answers:
//
//   - percent hack "user%other.test@local": a local recipient whose local
//     part is the literal string "user%other.test"; accepted as local and
//     routed by its domain only (no transport here interprets "%").
//   - bang path "other.test!user@local": likewise local and literal;
//     "other.test!user" without a domain is a syntax error, refused.
//   - source route "@local:user@other.test": the route is dropped (RFC 5321
//     section 4.1.1.3 / 3.6.1), the recipient is user@other.test, relay
//     denied.
//   - quoted local part with "@", "\"user@other.test\"@local": local.
//   - trailing dot "user@local.": normalized to local, accepted.
//   - IP literal "user@[127.0.0.1]": never local by name, relay denied.
//   - look-alikes "local.other.test", "otherlocal", "xlocal": not local.
//   - a local MAIL FROM from outside without AUTH: 550 5.7.1 (spoofing our
//     own domain), at mail with CheckMailRelay, at every rcpt with
//     CheckRelay.
//   - an authenticated identity outside the local domains (or a bare user
//     name) does not grant relaying; it may still send to local domains.
//
// A refused recipient gets 554 5.7.1 "Relay access denied". The chain's rcpt
// default already denies a recipient no rule accepted; the rules here return
// Accept for the allowed cases, which ends the rcpt stage, so rules that
// must see every recipient (mailbox checks) are registered before them.
//
// # Local recipients
//
// A RecipientTable knows the recipients of the local (virtual) domains:
// accounts, aliases to local or remote targets, a catch-all per domain
// ("@example.com" as an alias), subaddresses ("john+news@" is john's; the
// separator is configurable), local parts in any case, and the postmaster
// and abuse addresses RFC 2142 requires of every domain. Accounts and
// aliases come from the config and from files (an alias file of lines
// "alias@domain: target, target", an account file of addresses, which
// the credential file of package auth is); Reload and Watch read the
// files again and swap the new table in atomically. A table with an alias
// cycle, a bad line (the error names the file and line), or an alias to a
// local address that does not exist never loads.
//
//	table, err := relay.NewRecipientTable(relay.RecipientConfig{
//		Domains: []string{"example.com"}, AccountFile: "users", AliasFile: "aliases"})
//	chain.Rcpt("recipients", table.RcptRule())     // unknown local: 550 5.1.1
//	chain.Rcpt("relay", relay.CheckRelay(internal, "example.com"))
//	chain.PreQ("aliases", table.ExpandRule())      // aliases become their targets
//	chain.Delivery("local", table.DeliveryRule()) // accounts to their maildir
//
// Aliases are expanded at preq, before the message is queued, as
// Postfix's cleanup applies virtual_alias_maps: the queue's envelope is
// made of tx.Rcpts, so each target is then delivered, retried and bounced
// on its own, with the alias kept as its ORCPT for DSNs. A delivery rule
// could not do it: it routes one recipient, it cannot make two. An
// expansion too deep (a loop the load could not see) or too large fails
// the message at the end of DATA, so the sender learns it at once.
//
// The table also tells which addresses a login owns (Owns: the login, the
// aliases that lead to it, addresses granted in RecipientConfig.Senders),
// for auth.CheckSenderLogin.
//
// # Transports
//
// MX, Smarthost and LMTP deliver a policy.Delivery and return one
// policy.Reply per recipient (2xx delivered, 4xx try again later, 5xx
// failed), which is the transport interface the queue consumes. They speak
// SMTP through a small client of this package rather than go-smtp's, which
// cannot do opportunistic STARTTLS, takes no context and stops at the first
// refused recipient. Every blocking step honours the context and the RFC
// 5321 timeouts of Timeouts. The message is streamed from
// policy.Message.Reader, dot-stuffed, with every line ending in CRLF: a bare
// CR or LF is sent as CRLF, so no bare line end ever leaves.
//
// # Anti-abuse rules
//
// Ready-made rules a server composes against spam and abuse, each made
// from an options struct and each giving the rules of the stages where it
// belongs:
//
//   - NewDNSBL checks the client's address in DNS block lists and allow
//     lists (RFC 5782), weighted and with Postfix's code mapping
//     (ParseDNSBLZone reads "zen.spamhaus.org=127.0.0.[2..11]*3"), at
//     connect, mail or rcpt. A listed client gets "554 5.7.1 Service
//     unavailable; Client host [192.0.2.1] blocked using
//     zen.spamhaus.org"; a DNS failure never refuses (it passes, or
//     tempfails with TempFail). The result is stored under DNSBLResultKey.
//   - NewRateLimiter counts connections per client address, and messages
//     and recipients per authenticated user or client address, with
//     golang.org/x/time/rate token buckets in a memory bounded by an LRU;
//     over a limit, 450 4.7.1. ParseRateLimits reads
//     "msgs=200/h,rcpts=1000/h,conns=60/m".
//   - NewGreylist greylists (client /24 or /64, sender, recipient)
//     triplets: 451 4.7.1 until a retry after 5 minutes, then allowed for
//     36 days; the state is kept in a file written atomically. It is off
//     unless registered; authenticated and internal clients, and
//     transactions a Skip function exempts (SPF pass), are never
//     greylisted.
//   - CheckHelo refuses a HELO that is neither a host name nor an address
//     literal (501 5.5.2), a name without a dot (504 5.5.2), and, from
//     outside, one that claims our names or addresses (550 5.7.1).
//
// A typical MX, in stage order:
//
//	chain.Connect("dnsbl", dnsbl.ConnectRule())
//	chain.Connect("rate-conns", limiter.ConnectRule())
//	chain.Helo("helo", relay.CheckHelo(relay.HeloOptions{Names: ours, Internal: internal}))
//	chain.Mail("rate-msgs", limiter.MailRule())
//	chain.Rcpt("rate-rcpts", limiter.RcptRule())
//	chain.Rcpt("greylist", greylist.RcptRule())
//	chain.Rcpt("relay", relay.CheckRelay(internal, "example.com"))
//
// The rules that never accept (Next or a refusal) come before the relay
// rules, which accept and so end the rcpt stage.
//
// Several nodes behind one domain's MX records count together when their
// RateLimiter and Greylist share a StateStore (RateLimitOptions.Store,
// GreylistOptions.Store): a compare-and-set key-value map, such as the
// JetStream buckets of github.com/mtakit/mtakit/queue/jetstream/kv. The
// token buckets and triplets are then kept there instead of memory (and
// the greylist's Dir); when the store fails, rate limits are not
// enforced (logged) and greylisting defers with 451 4.3.0.
//
// # Configuration and logging
//
// The transports are configured by their exported fields, each zero value
// a documented default (&relay.MX{Resolver: r, Hostname: h}, &relay.LMTP{...},
// &relay.Smarthost{...}); a transport's fields must not be changed once it
// delivers. The relay rules are made from a Policy (its fields Internal
// and Local, or NewPolicy) or by the CheckRelay shortcuts, whose arguments
// are the same. The anti-abuse rules are made from DNSBLOptions,
// RateLimitOptions and GreylistOptions (NewDNSBL, NewRateLimiter and
// NewGreylist validate them) and HeloOptions (CheckHelo); their fields
// must not be changed once the rules run. Each transport, and DNSBL,
// RateLimiter and Greylist, logs to its Logger field; nil means
// slog.Default(). The other rules do not log: their verdicts go to the
// chain's Logger and Observer.
package relay
