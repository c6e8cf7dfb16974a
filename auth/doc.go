// Package auth holds the ready-made rules and helpers that authenticate
// mail and its senders: SMTP AUTH credentials, SPF, DKIM signing and
// verification, DMARC, and Authentication-Results.
//
// Every rule here depends on package policy only; DNS always goes through a
// policy.Resolver the caller passes in, so tests can point it at a DNS
// server on loopback.
//
// # Configuration and logging
//
// Rules and components are configured by exported fields of a struct, each
// field's zero value a documented default; there are no option functions.
// The ready-made rules take an options struct: CheckSPF(SPFOptions{...}),
// VerifyDKIM(DKIMVerifyOptions{...}), CheckDMARC(DMARCOptions{...}), and
// SignOrVerifyDKIM takes the latter beside its signer. LoadCredentialFile
// takes CredentialOptions{...}, CheckSenderLogin and CheckFromLogin take
// SenderLoginOptions{...}. A DKIMSigner (from NewDKIMSigner) and a
// FailureLimiter are configured by their own fields. The rules copy their
// options when built; the fields of a DKIMSigner or FailureLimiter must not
// change once it is in use.
//
// Logging goes to the Logger field (*slog.Logger) of the options: nil means
// slog.Default(). There is no other way to set a logger. The rules log
// results at debug level and DNS trouble at warn level; a CredentialFile
// logs reloads and refused attempts, never passwords.
//
// The package has no mutable exported variables other than its sentinel
// errors; DefaultDKIMHeaders returns a fresh copy of its list.
//
// # SMTP AUTH
//
// CredentialFile is an smtp.Authenticator, which the smtp server calls for
// each AUTH attempt: it checks passwords against a file of
// "address:bcrypt-hash" lines (HashPassword makes a hash), reloadable by
// Reload or automatically by Watch. Unknown users cost the same bcrypt
// comparison as known ones. A FailureLimiter counts failures per client
// address (IPv6 by /64): after MaxFailures failures attempts are slowed
// down, after RefuseAfter they are refused for a cool-down with a
// *RateLimitError, whose Temporary method makes the server answer 454
// 4.7.0. A wrong password is ErrInvalidCredentials (535 5.7.8). The
// nodes of a fleet count a guesser's failures together when their
// FailureLimiters share a FailureStore (FailureLimiter.Store), such as the
// JetStream buckets of github.com/mtakit/mtakit/queue/jetstream/kv; when
// it fails, AUTH answers 454 4.7.0, never an unlimited guess.
//
// # Sender ownership
//
// CheckSenderLogin (mail stage) and CheckFromLogin (preq, the header From)
// are Postfix's reject_sender_login_mismatch: an authenticated user may
// send only as an address they own, their login (in any case, with or
// without a "+" subaddress) or one that SenderLoginOptions.Owners grants
// them; anything else gets 553 5.7.1 "Sender address rejected: not owned
// by user". The null sender stays allowed; sessions that did not
// authenticate are left to the relay rules. Owners is a one-method
// interface, SenderOwners, declared here so that this package needs
// nothing of relay: relay.RecipientTable satisfies it with its aliases
// and grants.
//
// # SPF
//
// CheckSPF returns a mail-stage rule that evaluates SPF (RFC 7208) with
// blitiri.com.ar/go/spf for the HELO identity, the MAIL FROM identity or
// both, in soft or strict mode:
//
//	mode    fail       softfail   permerror  temperror  none, neutral, pass
//	soft    550 5.7.23 accept     accept     accept     accept
//	strict  550 5.7.23 550 5.7.23 550 5.7.24 451 4.7.24 accept
//
// The rule stores an SPFResult under SPFResultKey for later rules (DMARC)
// and adds a Received-SPF trace field (RFC 7208 section 9.1) to the
// transaction's header for readers downstream. Sessions that authenticated
// are skipped by default (SPFOptions.CheckAuthenticated).
//
// # Results between rules
//
// The rules hand their results to later rules as typed values in the
// transaction, never as header text to parse back: SPFResultKey,
// DKIMResultsKey and DMARCResultKey. The queue keeps these values with the
// message (as JSON, see policy.Key), so a postq rule after a restart reads
// the same values as a preq rule; every type stored under them round-trips
// through encoding/json. Header fields (Received-SPF, Authentication-Results)
// are written for readers downstream and are never trusted as results.
//
// The SPF library tells a temporary DNS error from a permanent one by a
// type assertion on *net.DNSError, so a resolver that wraps its errors, or
// returns context.DeadlineExceeded, would turn a temperror into a
// permerror. CheckSPF therefore always queries through a Resolver, which
// wraps any policy.Resolver, applies a per-lookup timeout and turns every
// error into a plain *net.DNSError with IsNotFound, IsTimeout and
// IsTemporary set right. Other rules may use it for the same reason.
//
// Every rule here, and package relay, classifies DNS errors the same way:
// NXDOMAIN and "no such record" mean the name or record does not exist;
// every other error, REFUSED and SERVFAIL included, timeouts and cancelled
// contexts, is temporary (temperror, a 4xx where the rule defers).
//
// # DKIM, DMARC and Authentication-Results
//
// The DKIM rules sign outgoing mail of local senders (postq) and verify
// incoming signatures, recording each result in Authentication-Results (RFC
// 8601) and for later rules. The DMARC rule evaluates the alignment of the
// SPF and DKIM results with the From domain, falling back to the
// organizational domain, and applies the domain's policy as a verdict the
// user can override. Authentication-Results fields that claim our own
// authserv-id are removed from incoming mail before ours is added.
//
// Signing and verifying stream the message through fixed buffers (our own
// body canonicalization and hashing, byte for byte go-msgauth's, which
// stays the reference in the tests): a 50 MiB message allocates about
// 50 KiB to sign and 130 KiB to verify, not twice its size.
package auth
