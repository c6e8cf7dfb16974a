package policy

// Delivery is one attempt to hand a message to some of its recipients
// through one transport. The queue builds it after the delivery rules chose
// the recipients' routes; transports (maildir, LMTP, SMTP) consume it.
// It lives here, not in the queue, so that transports in other packages
// need nothing but policy.
type Delivery struct {
	Tx      *Transaction // the envelope: Tx.From, Tx.Params, Tx.ID
	Rcpts   []Recipient  // the recipients of this attempt, all on one route
	Route   Route        // the route they share (Route.Target: mailbox, host:port, ...)
	Message *Message     // the message to send, header edits included
}

// A transport reports one Reply per recipient of a Delivery, in order:
// 2xx delivered, 4xx try again later, 5xx failed for good (bounce). A
// failure before any recipient was tried (connection refused, no MX) gives
// every recipient the same reply.
