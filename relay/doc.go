// Package relay holds the anti-open-relay rules and the outbound transports
// of mtakit.
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
// # Configuration and logging
//
// The transports are configured by their exported fields, each zero value
// a documented default (&relay.MX{Resolver: r, Hostname: h}, &relay.LMTP{...},
// &relay.Smarthost{...}); a transport's fields must not be changed once it
// delivers. The relay rules are made from a Policy (its fields Internal
// and Local, or NewPolicy) or by the CheckRelay shortcuts, whose arguments
// are the same. Each transport logs to its Logger field; nil
// means slog.Default(). The rules do not log: their verdicts go to the
// chain's Logger and Observer.
package relay
