// Package milter is a milter client as policy rules: it lets the filters
// mail administrators already run (rspamd, OpenDKIM, OpenDMARC,
// clamav-milter, spamass-milter) judge and change mail, as Postfix's
// smtpd_milters and Sendmail's InputMailFilters do. It speaks the milter
// protocol, version 6, through github.com/d--j/go-milter.
//
// # Public API
//
//	m, err := milter.New(milter.Options{
//		Name:          "rspamd",
//		Addr:          "inet:127.0.0.1:11332", // or "unix:/run/rspamd/milter.sock"
//		DefaultAction: milter.Tempfail,        // or milter.Accept
//	})
//	defer m.Close()
//	milter.Register(chain, m)                  // several: Register(chain, rspamd, opendkim)
//
//	type Options struct {
//		Addr, Name string
//		ConnectTimeout, CommandTimeout, EOMTimeout, IdleTimeout time.Duration
//		DefaultAction DefaultAction // Tempfail (zero) or Accept
//		Quarantine    string        // quarantine queue of SMFIR_QUARANTINE; default "milter"
//		Hostname, DaemonName, TempDir string
//		Logger *slog.Logger
//	}
//	func New(Options) (*Milter, error)
//	func Register(chain *policy.Chain, ms ...*Milter)
//	func (*Milter) ConnectRule() policy.ConnectRule   // the rules Register registers,
//	func (*Milter) HeloRule() policy.HeloRule         // for a chain that places
//	func (*Milter) MailRule() policy.MailRule         // them one by one
//	func (*Milter) RcptRule() policy.RcptRule
//	func (*Milter) MessageRule() policy.MessageRule   // preq (or postq)
//	func DiscardRule() policy.DeliveryRule            // drops what a milter discarded
//	const DiscardedKey policy.Key[string]             // set on a discarded transaction
//	const DiscardRuleName = "milter:discard"
//	func (*Milter) Close() error
//	func (*Milter) Name() string; func (*Milter) Addr() Addr
//	func ParseAddr(string) (Addr, error)              // "inet:host:port", "unix:/path"
//	func ParseDefaultAction(string) (DefaultAction, error)
//
// Register registers, for each milter in order, rules named
// "milter:<name>:connect", ":helo", ":mail", ":rcpt" and ":preq", and
// DiscardRule at delivery ("milter:discard"). Call it where the milters
// should run: rules registered later see the message as the milters left
// it (a modified message is still checked by them); the rcpt rules must
// come before a rule that accepts recipients (relay.CheckRelay's Accept
// ends the stage), the preq rules before relay.RecipientTable's
// ExpandRule (a recipient a milter adds is then expanded, and one it
// deletes is the address it was sent), and the discard rule before the
// rules that route: doe-family registers the rules one by one for that
// (see its rules_milter.go). A
// preq rule before the milter's that returns Accept, and a ForceAccept
// or Quarantine decided earlier, skip the milter for that message, as
// they skip every later filtering rule.
//
// # One milter connection per SMTP session
//
// The connect rule dials the milter and sends the client's address and
// verified reverse name (or, as Postfix, "[address]"); the helo rule sends
// HELO (again after STARTTLS, with the TLS macros); the mail rule MAIL
// FROM with its ESMTP parameters; the rcpt rule each RCPT TO; the preq
// rule DATA, each header field, end of header, the body in chunks of 64
// KiB and end of message. A later message of the session goes on the
// same connection. Macros: j, v, _, {daemon_name}, {daemon_addr},
// {daemon_port}, {if_addr}, {client_addr}, {client_port}, {client_name},
// {client_ptr} at connect; {tls_version}, {cipher}, {cipher_bits},
// {cert_subject}, {cert_issuer} at HELO; i (the queue ID, known from
// MAIL on), {auth_type}, {auth_authen}, {auth_author}, {mail_addr},
// {mail_host}, {mail_mailer} at MAIL; i, {rcpt_addr}, {rcpt_host},
// {rcpt_mailer} at RCPT; i at DATA, end of header and end of message.
//
// A milter connection is closed (QUIT) when its SMTP session ends
// (policy.Conn.Closed, which the smtp package closes), and also when the
// session has been quiet for Options.IdleTimeout (10s by default), a
// client pausing that long: a milter built on libmilter (OpenDKIM,
// clamav-milter) keeps a thread per connection. Each rule first brings the milter up to
// date: a stage whose rule did not run (an earlier rule's Accept ended
// it) or a connection closed meanwhile is made good by opening a new
// connection and sending connect, HELO, MAIL and the recipients again.
// The milter therefore sees every stage, in order, whatever the chain
// skipped. A connection that the message rule opened (the rule used
// alone, or at postq on a transaction rebuilt from the queue) is closed
// once the message is done: one milter session per message.
//
// # Verdicts
//
//	milter says               at          mtakit does
//	continue                  any         Next: the next rule runs
//	accept                    connect/HELO  Next; the milter is not asked again in this session
//	accept                    MAIL..EOM   Next; the milter is not asked again for this message
//	reject (SMFIR_REPLYCODE)  any         Deny with the milter's reply ("554 5.7.1 Spam")
//	reject                    any         Deny 550 5.7.1 Command rejected
//	tempfail                  any         Deny 451 4.7.1 Service unavailable - try again later
//	reject/tempfail           RCPT        that recipient only
//	discard                   MAIL..EOM   250 to the client; the message is force-accepted,
//	                                      marked with DiscardedKey and dropped at delivery
//	                                      (DiscardRule), and logged
//	quarantine                EOM         Quarantine(Options.Quarantine), the reason logged
//
// At connect a refusal closes the connection (with the milter's code);
// at HELO the smtp package refuses the HELO and the MAIL after it.
//
// # Modifications
//
// At end of message the modifications are applied, in the order the
// milter sent them, before the message is queued: add header (at the end
// of the header), insert header (at an index, 0 the top), change header
// (the n-th field of a name; an empty value deletes it), change sender,
// add and delete recipient, replace body. Header values go to the
// milter without the space after the colon and with LF line ends, as
// Postfix sends them (with the space when the milter asks for it,
// SMFIP_HDR_LEADSPC). As Postfix and Sendmail hide their own Received
// field, the milter is not shown this hop's trace fields (our Received
// field and those rules put above it, such as Received-SPF): it sees the
// header as the client sent it. A change index counts the fields it saw;
// an insert index counts our trace fields as one, as in Postfix (0 is
// the very top, 1 just below our Received field). A replaced body larger than 1 MiB
// is written to an unlinked file in TempDir. A message left without
// recipients is discarded. Several milters see the message in turn, each
// as the ones before left it.
//
// # Failures and timeouts
//
// A milter that cannot be dialled within ConnectTimeout, that does not
// answer a command within CommandTimeout (the end of message within
// EOMTimeout), that closes the connection or answers something that is
// not the milter protocol is unavailable, and DefaultAction applies for
// the rest of the SMTP session, as Postfix's milter_default_action:
// Tempfail refuses MAIL, RCPT or the message with 451 4.7.1 (never a 250
// for a message the milter did not see; at connect and HELO nothing is
// refused, the MAIL after is); Accept goes on without the milter, with a
// warning. The chain's RuleTimeout bounds every rule too: raise it with
// EOMTimeout for a slow scanner. A packet the milter announces longer
// than 64 MiB is refused before anything is allocated for it.
//
// # Configuration and logging
//
// A Milter is configured by Options, passed to New, which checks the
// address; each zero field is a documented default, and the Options
// must not be changed once New returned (New copies them). There are no
// functional options. Options.Logger receives verdicts (info),
// modifications (debug) and failures (warn); nil means slog.Default().
package milter
