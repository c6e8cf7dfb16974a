package policy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Conn is what is known of one client connection. The smtp package fills it
// and keeps it for the life of the connection; STARTTLS clears what was
// learned before it (HELO name, AUTH), as RFC 3207 requires.
type Conn struct {
	ID       string         // unique per connection, for logs
	Listener string         // name of the listener that accepted it ("mta", "submission")
	Remote   netip.AddrPort // the client's address
	Local    netip.AddrPort // our address it connected to

	// ReverseName is the client's verified reverse DNS name (PTR whose name
	// resolves back to Remote), or "" when none was found or resolution is
	// off.
	ReverseName string

	Helo  string               // HELO/EHLO argument; "" before it
	ESMTP bool                 // the client said EHLO
	TLS   *tls.ConnectionState // nil on a plaintext connection

	// AuthUser is the identity the client authenticated as; "" when it has
	// not. AuthMechanism is the SASL mechanism used.
	AuthUser      string
	AuthMechanism string

	Started time.Time

	// Closed is closed when the connection ends (the client quit or was
	// disconnected), after its last rule ran: a rule that keeps something
	// per connection (a milter's connection, say) releases it then. Nil
	// when nobody will say: a transaction rebuilt from the queue (postq,
	// delivery) has a Conn of its own, and policytest's.
	Closed <-chan struct{}

	state connState
}

// connState is the part of a connection's policy state that later stages
// inherit (force-accept and quarantine given before MAIL).
type connState struct {
	decided
	atConnect decided // what the connect stage decided; survives STARTTLS
}

type decided struct {
	forceAccepted bool
	quarantine    string
	quarantinedBy quarantinedBy
}

// quarantinedBy is the rule that chose the quarantine, and its reason.
type quarantinedBy struct{ rule, reason string }

// Authenticated reports whether the client has authenticated.
func (c *Conn) Authenticated() bool { return c.AuthUser != "" }

// ResetTLS forgets what the client said before STARTTLS (RFC 3207 section
// 4.2) and records the new TLS state. A force-accept or quarantine decided
// at helo or auth is forgotten with it; one decided at connect, on the
// client's address, stays.
func (c *Conn) ResetTLS(st *tls.ConnectionState) {
	c.TLS = st
	c.Helo, c.ESMTP = "", false
	c.AuthUser, c.AuthMechanism = "", ""
	c.state.decided = c.state.atConnect
}

// AuthInfo is what the auth stage sees: the mechanism and the identity whose
// credentials the Authenticator has just verified.
type AuthInfo struct {
	Mechanism string
	Identity  string
}

// MailParams are the parameters of MAIL FROM.
type MailParams struct {
	Size       int64  // SIZE=, 0 when absent
	Body       string // BODY=7BIT, 8BITMIME or BINARYMIME; "" when absent
	SMTPUTF8   bool
	RequireTLS bool
	Ret        string // DSN RET=FULL or HDRS
	EnvID      string // DSN ENVID=, decoded
	Auth       string // AUTH= (RFC 4954), "<>" when given as such
}

// Recipient is one RCPT TO with its parameters.
type Recipient struct {
	Addr   Address
	Notify []string // DSN NOTIFY=: NEVER, or any of SUCCESS, FAILURE, DELAY
	ORCPT  string   // DSN ORCPT=, as "rfc822;addr"
}

// Transaction is one mail transaction: MAIL, its RCPTs and DATA. A new one
// starts at every MAIL; it is what the mail, rcpt, preq, postq and delivery
// stages see. After queueing it is rebuilt from the queue's envelope.
type Transaction struct {
	Conn *Conn

	ID       string // queue ID, assigned at MAIL; appears in Received and logs
	From     Address
	Params   MailParams
	Rcpts    []Recipient // recipients accepted so far
	Received time.Time

	// Header holds fields rules add before DATA (for example Received-SPF
	// at mail); the smtp package prepends them to the message.
	Header Header

	forceAccepted bool
	quarantine    string
	quarantinedBy quarantinedBy
	values        map[string]any
}

// NewTransaction starts a transaction on conn, inheriting the force-accept
// and quarantine decided for the connection.
func NewTransaction(conn *Conn, id string) *Transaction {
	tx := &Transaction{Conn: conn, ID: id, Received: time.Now()}
	if conn != nil {
		tx.forceAccepted = conn.state.forceAccepted
		tx.quarantine = conn.state.quarantine
		tx.quarantinedBy = conn.state.quarantinedBy
	}
	return tx
}

// ForceAccepted reports whether a rule force-accepted the transaction.
func (tx *Transaction) ForceAccepted() bool { return tx.forceAccepted }

// SetForceAccepted marks the transaction force-accepted; the queue uses it
// when it rebuilds a transaction from its envelope.
func (tx *Transaction) SetForceAccepted(v bool) { tx.forceAccepted = v }

// Quarantine returns the quarantine queue chosen for the transaction, or "".
func (tx *Transaction) Quarantine() string { return tx.quarantine }

// QuarantinedBy returns the rule whose verdict chose the quarantine of
// Quarantine and the reason it gave (see QuarantineBecause), "" for
// what is not known (a quarantine set with SetQuarantine).
func (tx *Transaction) QuarantinedBy() (rule, reason string) {
	return tx.quarantinedBy.rule, tx.quarantinedBy.reason
}

// SetQuarantine chooses a quarantine queue for the transaction.
func (tx *Transaction) SetQuarantine(q string) { tx.quarantine = q }

// Key names a typed value that rules attach to a transaction, so that a rule
// leaves a result for a later one (the SPF result of mail for DMARC at
// postq). Declare keys as constants, named after their package so that two
// packages never share one:
//
//	const greylistKey policy.Key[GreylistResult] = "example.com/greylist"
//
// Values survive the queue: when a transaction is queued each value is kept
// as JSON under its key's name (Transaction.EncodeValues), and a transaction
// rebuilt from the queue decodes it at its key's first Get. T must therefore
// round-trip through encoding/json; a value that cannot be encoded makes the
// queue refuse the message with a temporary error.
type Key[T any] string

// Get returns the value stored under k in tx, and whether there is one. A
// value kept by the queue that does not decode as a T counts as absent.
func (k Key[T]) Get(tx *Transaction) (T, bool) {
	var zero T
	switch v := tx.values[string(k)].(type) {
	case T:
		return v, true
	case encodedValue:
		var t T
		if err := json.Unmarshal(v, &t); err != nil {
			return zero, false
		}
		tx.values[string(k)] = t
		return t, true
	}
	return zero, false
}

// Set stores v under k in tx, replacing any value it had.
func (k Key[T]) Set(tx *Transaction, v T) {
	if tx.values == nil {
		tx.values = make(map[string]any)
	}
	tx.values[string(k)] = v
}

// encodedValue is a value restored from the queue, not decoded yet.
type encodedValue json.RawMessage

// EncodeValues returns the values stored in tx (see Key) as JSON, by key
// name, for a queue to keep with the message; nil when there are none.
func (tx *Transaction) EncodeValues() (map[string]json.RawMessage, error) {
	if len(tx.values) == 0 {
		return nil, nil
	}
	out := make(map[string]json.RawMessage, len(tx.values))
	for name, v := range tx.values {
		if e, ok := v.(encodedValue); ok {
			out[name] = json.RawMessage(e)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("policy: value %q: %w", name, err)
		}
		out[name] = b
	}
	return out, nil
}

// SetEncodedValues restores values that EncodeValues returned, on a
// transaction rebuilt from the queue. Each is decoded at its key's first Get.
func (tx *Transaction) SetEncodedValues(values map[string]json.RawMessage) {
	if len(values) == 0 {
		return
	}
	if tx.values == nil {
		tx.values = make(map[string]any, len(values))
	}
	for name, v := range values {
		tx.values[name] = encodedValue(v)
	}
}

// Route is where a delivery rule sends one recipient. Transport names a
// transport the queue knows ("maildir", "mbox", "lmtp", "smtp", "drop");
// Target is its argument (a mailbox name, a host:port). The zero Route means
// the queue's default transport.
type Route struct {
	Transport string
	Target    string
}

// Resolver is the DNS a rule may use. *net.Resolver satisfies it, and so does
// any resolver the blitiri SPF library accepts. Rules take it as a parameter
// so that tests point them at a DNS server on loopback.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// ResolverAt returns a *net.Resolver that sends every query to the DNS server
// at addr (host:port), never to the system's. With addr "" it returns
// net.DefaultResolver.
func ResolverAt(addr string) *net.Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The Go resolver does not stop a UDP read when ctx ends; a
			// deadline makes a rule's timeout cut a lookup short.
			if dl, ok := ctx.Deadline(); ok {
				c.SetDeadline(dl)
			}
			return c, nil
		},
	}
}
