// Package policytest runs a policy.Chain, or a single rule, against a
// described session without sockets, so that users unit-test their rules
// the way they unit-test any Go function.
//
// Run plays a whole session through the chain in the order an SMTP server
// would (connect, helo, auth, mail, each rcpt, preq, postq, delivery) and
// returns every stage's Result:
//
//	out, err := policytest.Run(ctx, chain, policytest.Session{
//		Remote: "203.0.113.5:4321",
//		From:   "alice@example.org",
//		Rcpts:  []string{"bob@example.com", "eve@elsewhere.example"},
//	})
//	// out.Rcpts[1].Reply is the reply eve's RCPT TO got.
//
// It stops where a server would: after a denied connect, helo, auth or
// mail, before DATA when no recipient was accepted, after a denied preq or
// postq. A denied recipient is only left out of the transaction.
//
// To call one rule directly, build its arguments with Conn, Transaction,
// Recipient and Message. A Recorder set as a chain's Observer (its
// Observe method) lists which rules ran and what they decided.
//
// Resolver is a fake DNS for rules that take a policy.Resolver (SPF, DKIM,
// DMARC, blocklists): records are given in maps, names can be made to fail
// temporarily or time out, and every answer and error is what
// *net.Resolver would return, so a rule's handling of "not found" versus
// "try again" is tested without a DNS server:
//
//	r := &policytest.Resolver{
//		TXT:      map[string][]string{"example.com": {"v=spf1 ip4:192.0.2.25 -all"}},
//		ServFail: []string{"broken.example"},
//	}
//
// # Configuration and logging
//
// Everything here is configured by exported fields whose zero values work:
// a Session's empty fields take the defaults listed with it, the zero
// Recorder records, and the zero Resolver answers "no such host" to every
// name. Fields must not be changed while a value is in use. The package has
// no logger of its own: the rules it runs log through the chain's Logger
// field (&policy.Chain{Logger: l}; nil means slog.Default()).
package policytest
