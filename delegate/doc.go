// Package delegate hands a message to an outside content filter and resumes
// the policy chain when it comes back; it also scans with clamd directly.
//
// # Delegation through an SMTP filter
//
// A Service describes a filter that relays what it receives to a fixed next
// hop, such as clamsmtpd, and the receiver where the filter sends each
// message back. The receiver is a small SMTP server that the Service runs
// itself. It is not the server clients talk to, so a returning message
// never starts a new transaction. Rule makes a preq or postq rule of it:
//
//	clamsmtpd := &delegate.Service{
//		Name:     "clamsmtpd",
//		Filter:   "127.0.0.1:10026", // clamsmtpd's Listen
//		Receiver: "127.0.0.1:10024", // clamsmtpd's OutAddress
//	}
//	go clamsmtpd.ListenAndServe(ctx)
//	chain.PreQ("antivirus", delegate.Rule(clamsmtpd, func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
//		if m.Header.Has("X-Virus-Infected") {
//			return policy.Quarantine("virus_q")
//		}
//		return policy.Next
//	}))
//
// For each message the rule:
//
//  1. registers a random token;
//  2. sends the message to Filter with the transaction's envelope and a
//     TokenHeader field carrying the token at the top;
//  3. waits for the message to come back.
//
// The receiver accepts connections from AllowedPeers only (loopback by
// default). It accepts MAIL, RCPT and DATA only when they match a waiting
// delegation: the token and the envelope. It removes the token field,
// stores the message in TempDir, hands it to the waiting rule, and only
// then answers 250. The rule replaces the message with the one returned,
// so the fields the filter added are visible, and returns the verdict of
// its then-rule.
//
// Every failure is answered 451 4.7.1: at preq the
// client retries, at postq the queue defers. Failures include:
//
//   - the filter is down, or refuses the message with 4xx or 5xx at any
//     command;
//   - the message does not come back within Timeout;
//   - what comes back has no token, or a token nobody waits for (the
//     receiver refuses it with 550 5.7.1).
//
// Nothing is lost and nothing goes on unscanned, unless FailOpen is set.
// With FailOpen the rule logs a warning and says Next.
//
// # clamsmtpd
//
// Configure clamsmtpd with OutAddress set to the Receiver and with
// "Action: pass". That action forwards infected mail tagged with
// "X-Virus-Infected: Virus Detected!" as the last header line. Clean mail
// gets the "Header:" line (for example X-Virus-Scanned). The other actions
// do not work with delegation:
//
//   - "Action: bounce" answers 550 to an infected message. The rule turns
//     that into a 451, so the client keeps retrying a virus.
//   - "Action: drop" answers 250 and discards the message. Nothing ever
//     comes back, and every infected message ends in a timeout and a 451.
//
// Keep MaxConcurrent below clamsmtpd's MaxConnections. Above it, clamsmtpd
// answers 421. testdata/clamav-env.sh runs a private clamd and clamsmtpd
// pair configured this way, and testdata/README.md records how both
// behave.
//
// # clamd directly
//
// ClamAV speaks clamd's INSTREAM protocol over TCP or a unix socket.
// ClamAVRule and ScanRule make rules of it with the same verdict shape:
//
//   - infected: quarantine, or refuse;
//   - clamd failing: 451 4.7.1, unless FailOpen.
//
// A message larger than clamd's StreamMaxLength fails with ErrSizeLimit.
//
// # Configuration and logging
//
// Service and ClamAV are configured by their exported fields, each zero
// value a documented default (&delegate.Service{...}, &delegate.ClamAV{...});
// their fields must not be changed once they are in use (a Service once it
// serves or delegates). Rule, ClamAVRule and ScanRule take the configured
// value. Service.Logger receives the receiver's and the delegation rules'
// logs, ClamAV.Logger the scan rules'; nil means slog.Default().
package delegate
