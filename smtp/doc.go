// Package smtp is mtakit's SMTP server: listeners with roles, TLS, limits
// and timeouts, and the go-smtp backend that runs a policy.Chain at every
// stage and hands accepted mail to a Queue.
//
// # Listeners and roles
//
// A Server serves several listeners, each with a name (it appears in
// policy.Conn.Listener) and a Role: RoleMTA (port 25: no AUTH needed; AUTH
// is offered after STARTTLS when an Authenticator is set), RoleSubmission
// (587: AUTH required before MAIL and offered only after STARTTLS unless the
// listener opts into AllowInsecureAuth) and RoleImplicitTLS (465: TLS from
// the first byte, AUTH required). AUTH supports PLAIN and LOGIN through the
// Authenticator interface.
//
// # Stages
//
// The connect rules run before the greeting, in a goroutine per connection
// (go-smtp has no hook there): a refusal is sent as the greeting (554, or
// 421 for a temporary one) and the connection closed. The helo rules run at
// the first EHLO, again when a later EHLO changes the name, and again at the
// first EHLO after STARTTLS; the auth rules after the Authenticator accepted
// the credentials; the mail rules at MAIL, where a new policy.Transaction
// gets its queue ID; the rcpt rules at each RCPT (a refusal rejects that
// recipient only; with no accepting rule the policy default denies). After DATA the body is streamed through a 64
// KiB buffer to a spool file (a message that fits stays in memory) while
// its size is counted and its line endings checked; our Received
// field and the fields rules added to tx.Header are written on top; the preq
// rules run on the message; then Queue.Enqueue stores it and only then does
// the client get 250 with the queue ID. A rule that fails or panics gives
// 451 4.3.0, and so does a queue that fails: never a 250 for mail that is
// not on disk. Every error sent is an SMTP reply with an enhanced status
// code; internal causes go to the log only.
//
// Facts about the connection (address, reverse name, TLS, AUTH) live in a
// policy.Conn that outlives go-smtp's sessions; STARTTLS resets what the
// client said before it (RFC 3207): the client must send EHLO again (MAIL
// and AUTH get 503 5.5.1 before it). Plaintext sent after STARTTLS in the
// same packet is discarded (the STARTTLS command-injection class,
// CVE-2011-0411).
//
// # Replies
//
// A refusal is sent as the rule gave it. A positive reply is the chain's
// Result.Reply: the stage's default (policy.DefaultReply) unless an Info or
// Accept verdict of a rule set one. What the client receives, by stage:
//
//	stage    default                                   with a rule's reply
//	connect  220 <Hostname> ESMTP Service Ready        220 <Hostname> <text>
//	helo     EHLO: 250-Hello <name>, the extensions    250-<Hostname> <text>, the extensions
//	         HELO: 250 2.0.0 Hello <name>              250 <Hostname> <text>
//	auth     235 2.7.0 Authentication succeeded        235 <enh> <text>
//	mail     250 2.1.0 Sender OK                       250 <enh> <text>
//	rcpt     250 2.1.5 Recipient OK                    250 or 251 <enh> <text>
//	preq     250 2.0.0 OK: queued as <ID>              250 <enh> <text> (queued as <ID>), when its code is 250
//
// The code is always the stage's own: a rule's other code (251 at MAIL, a
// 220 at helo) is replaced by it (at preq the rule's reply is then not
// used). The enhanced code is the rule's when it is well formed and of the
// code's class, else the stage's default. The text is made one line
// (control characters become spaces); an empty one keeps the default. At
// connect and helo only the text is the rule's, after our name (RFC 5321
// section 4.1.1.1); the EHLO reply goes on with the extensions. postq and
// delivery rules have no client to reply to.
//
// # Message content
//
// Every line of a message must end in CRLF: a bare LF or bare CR anywhere
// in DATA gets 550 5.6.11 and the message is dropped, so that no
// non-standard end-of-data sequence can smuggle a second message past a
// relay (SMTP smuggling). A NUL byte gets 550 5.6.0. 8-bit data without
// BODY=8BITMIME is accepted, as Postfix does, and logged. BDAT (CHUNKING,
// which go-smtp always advertises) goes through the same checks.
//
// # Limits
//
// Limits has safe defaults: 25 MiB messages (larger ones are read to the
// end and refused with 552 5.3.4), 100 recipients (452 4.5.3), lines of
// 2000 bytes, a 5 minute command timeout and a 10 minute data timeout, 1000
// connections in total and 20 per client IP (421 4.7.0 at accept), and 10
// error replies per session before it is closed with 421 4.7.0. go-smtp
// itself closes a session after its fourth unknown or malformed command.
//
// # What go-smtp decides
//
// go-smtp parses the commands and writes the replies. The server sits below
// it, sees every byte it reads and writes in plaintext (it makes the TLS of
// STARTTLS itself, below go-smtp), and corrects it where it is wrong:
//
//   - A bare "RCPT TO:<postmaster>" (no domain; any case; parameters
//     allowed), which RFC 5321 section 4.5.1 requires a server to accept
//     and go-smtp refuses with 501, is handed to go-smtp as
//     "RCPT TO:<postmaster@D>", D being Config.PostmasterDomain (default
//     Hostname) in lower case. The rcpt rules, the queue and the Received
//     field see policy.Address{Local: "postmaster", Domain: D}, exactly as
//     if the client had written it, so the rules that accept D's
//     postmaster accept the bare form. Make D a domain they accept (the
//     primary mail domain, not the host name, when they differ).
//   - STARTTLS with a parameter gets 501 5.5.4 and no handshake (RFC 3207
//     section 4); STARTTLS over TLS 502 5.5.1, after AUTH or during a mail
//     transaction 503 5.5.1. The session goes on in each case.
//   - go-smtp's own positive replies (250 2.0.0 to MAIL and RCPT, 235
//     2.0.0 to AUTH) are replaced as described under Replies.
//
// go-smtp still decides the syntax of commands and parameters (its 500,
// 501 and 504 replies and their texts), the order of commands (502 5.5.1
// before the first EHLO, or for RCPT without MAIL), the list of EHLO
// extensions, and it closes a session after its fourth unknown or malformed
// command. policy.Conn.ESMTP is known from MAIL on (it is read from the
// reply go-smtp gave to HELO or EHLO). go-smtp's reader drops "." + CR at
// the start of a data line when no LF follows, so that bare CR never
// reaches the checks: the text after it is kept as data of the same
// message, never a second one.
//
// # Shutdown
//
// Shutdown stops accepting, closes idle sessions, lets a session that is
// receiving a message finish (its message is queued and gets its 250) and
// then closes it. Close stops everything at once, and so does the end of the
// context given to Serve or ListenAndServe. The module's root package,
// mtakit, runs a Server with a queue and its scheduler and stops all three
// in order.
//
// # Configuration and logging
//
// A Server is configured by the Config given to NewServer: exported fields
// whose zero values are documented defaults (Limits' zero fields take
// DefaultLimits), as everywhere in the SDK; there are no functional options.
// Config.Logger receives the connection and transaction logs, one line per
// command decision, never AUTH secrets; nil means slog.Default(). Every
// line of a transaction carries its queue ID under the key "id", the key
// the queue's lines of the same message use; the connection's lines carry
// "conn". Config.Events, nil by default, is told of connections,
// sessions, TLS handshakes, AUTH attempts and messages, for metrics (see
// Events; the package mtakit/policy/metrics implements it).
//
// # TLS
//
// Config.TLSConfig enables STARTTLS (offered on MTA and submission
// listeners) and implicit TLS, with TLS 1.2 as the minimum and Go's default
// cipher suites. A failed STARTTLS handshake closes the connection. CertReloader reloads a renewed
// certificate without a restart; SelfSignedCertificate creates a pair for
// tests and first starts.
package smtp
