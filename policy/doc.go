// Package policy is the heart of mtakit: the stages of an SMTP transaction,
// the typed rules that run at each, the verdicts they return, and the Chain
// that evaluates them.
//
// # Stages
//
// A message meets eight stages: connect (before the greeting), helo, auth
// (after the credentials were verified), mail, rcpt (once per recipient),
// preq (after DATA, before the message is queued and acknowledged), postq
// (after the 250, from the queue) and delivery (per recipient, choosing a
// Route). Each stage has its own rule type (ConnectRule, HeloRule, AuthRule,
// MailRule, RcptRule, MessageRule for preq and postq, DeliveryRule), so a rule
// only reads what exists at its stage.
//
// Rules are registered with a unique name, which logs, traces and the
// observer hook report:
//
//	chain := policy.NewChain()
//	chain.Rcpt("relay", relay.CheckRelay(internal, "example.com"))
//	chain.PreQ("no-exe", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
//		if strings.Contains(m.Header.Get("Content-Type"), ".exe") {
//			return policy.Deny(550, "5.7.1", "Executables are not accepted")
//		}
//		return policy.Next
//	})
//
// # Verdicts
//
// Rules of a stage run in order until one decides. Next goes on; Info goes on
// and sets the positive reply; Accept ends the stage; ForceAccept ends it and
// skips every later filtering rule of the transaction; Deny answers with an
// SMTP reply (at rcpt: for that recipient only); Quarantine accepts and
// stores the message in a named quarantine queue, never delivered; Fail is a
// deny with 451 4.3.0 for our own errors, whose cause goes to the log only.
// A rule that panics counts as Fail.
//
// When every rule of a stage says Next, the stage accepts, except rcpt: a
// recipient no rule accepted is refused with 554 5.7.1 (Chain.RcptDefault
// changes it). A chain that forgets its relay rule is therefore closed, not
// open.
//
// Rules that only act (log, add a header) are written as actions
// (MailAction, MessageAction, ...), which cannot return a verdict at all.
//
// # Views
//
// Conn holds per-connection facts (addresses, reverse name, HELO, TLS state,
// authenticated identity). Transaction holds the envelope (sender with its
// parameters, accepted recipients, header fields added before DATA, typed
// values left by rules through Key). Message is the message at preq and
// postq: an editable Header and a body streamed from where it is stored.
//
// Addresses are parsed once into Address: the domain normalized (lower case,
// A-label, no trailing dot), the local part unquoted and re-quoted when
// printed.
//
// # Results between rules
//
// A rule leaves a typed result for a later one with a Key: a constant of
// type Key[T] named after its package ("auth.spf"). Set stores the value in
// the transaction and Get reads it back. The queue keeps the values with the
// message as JSON (Transaction.EncodeValues), so the postq and delivery
// rules, which see a transaction rebuilt from the queue, read them as the
// mail and preq rules left them; T must round-trip through encoding/json.
// Header text is for other programs, never the way our rules talk to each
// other.
//
// # Configuration and logging
//
// A Chain is configured by its fields (Logger, Observer, RuleTimeout,
// RcptDefault), each zero value a documented default, as the rest of the
// SDK is; there are no functional options. Chain.Logger receives each
// decision at debug level and each rule failure at error level; nil means
// slog.Default(). Verdicts are built by functions (Next, Accept, Deny, ...):
// the package has no exported variables but its sentinel errors.
//
// policy imports nothing of the rest of mtakit and nothing of go-smtp; rules
// written against it can be unit-tested without sockets with the policytest
// package.
package policy
