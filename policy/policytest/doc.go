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
package policytest
