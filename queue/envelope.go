package queue

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// EnvelopeVersion is the version of the envelope format this package writes.
// Decoding refuses any other version, so a newer spool is never misread.
const EnvelopeVersion = 2

// Recipient states.
const (
	RcptPending   = "pending"   // not yet delivered, or deferred (4xx)
	RcptDelivered = "delivered" // a transport answered 2xx
	RcptFailed    = "failed"    // a transport or rule answered 5xx, or the lifetime ran out
)

// Envelope is what the spool keeps beside each message: the SMTP envelope,
// the facts of the client connection and the delivery state. It is stored
// as JSON records appended to the entry file <queue>/<id>.q after the
// message (see entry.go); the last valid record is the current envelope.
//
//	{
//	  "v": 2,                          // EnvelopeVersion
//	  "id": "1a2b3c",                  // queue ID (file name safe)
//	  "size": 4096,                    // size of the stored message, checked on load (truncation)
//	  "head": "RnJvbTog...",           // base64: header block as the postq rules left it (absent: unchanged)
//	  "body_off": 1024,                // with head: where the body starts in the stored message
//	  "from": {"local": "a", "domain": "example.org"},   // null sender: both ""
//	  "params": {"size": 0, "body": "8BITMIME", "smtputf8": false, "requiretls": false,
//	             "ret": "HDRS", "envid": "x", "auth": ""},
//	  "rcpts": [{"addr": {...}, "notify": ["FAILURE"], "orcpt": "rfc822;b@example.com",
//	             "state": "pending", "reply": {"Code": 451, "Enhanced": "4.4.1", "Text": "..."},
//	             "dsn": false}],
//	  "client": {"conn": "c1", "listener": "mta", "remote": "192.0.2.1:4567", "local": "...",
//	             "reverse": "", "helo": "mx.example.org", "esmtp": true, "tls": true,
//	             "tls_version": 772, "tls_cipher": 4865, "tls_sni": "",
//	             "auth_user": "", "auth_mech": "", "started": "..."},
//	  "received": "2026-01-02T03:04:05Z",
//	  "force_accepted": false,
//	  "postq_done": false,             // postq rules ran; their header edits are in head
//	  "dsn": false,                    // this message is a DSN we generated
//	  "attempts": 0, "next_attempt": "...", "last_attempt": "...", "last_error": "",
//	  "in_flight": false,              // an attempt was recorded as started, its outcome not yet
//	  "crashes": 0,                    // attempts in a row the process stopped during
//	  "delay_warned": "...",           // when the last delay DSN (NOTIFY=DELAY) was queued
//	  "moved": "...",                  // when the entry came into its queue (set on each move)
//	  "returned": false,               // an operator bounced it: deleted once its DSN is queued
//	  "values": {"auth.spf": {...}}    // rules' typed results (policy.Key), by key name
//	}
type Envelope struct {
	Version       int         `json:"v"`
	ID            string      `json:"id"`
	Size          int64       `json:"size"`
	Head          []byte      `json:"head,omitempty"`
	BodyOff       int64       `json:"body_off,omitempty"`
	From          Addr        `json:"from"`
	Params        Params      `json:"params"`
	Rcpts         []RcptState `json:"rcpts"`
	Client        Client      `json:"client"`
	Received      time.Time   `json:"received"`
	ForceAccepted bool        `json:"force_accepted,omitempty"`
	PostQDone     bool        `json:"postq_done,omitempty"`
	DSN           bool        `json:"dsn,omitempty"`
	Attempts      int         `json:"attempts"`
	NextAttempt   time.Time   `json:"next_attempt,omitzero"`
	LastAttempt   time.Time   `json:"last_attempt,omitzero"`
	LastError     string      `json:"last_error,omitempty"`
	// InFlight is set by the record saved just before a delivery attempt
	// and cleared by the record of its outcome: found set when the
	// scheduler loads the message, it means the process stopped during
	// that attempt (a crash, kill -9).
	InFlight bool `json:"in_flight,omitempty"`
	// Crashes counts the attempts in a row that did not finish because
	// the process stopped during them; an attempt that finishes resets it.
	Crashes int `json:"crashes,omitempty"`
	// DelayWarned is when the last delay DSN (Action: delayed, for
	// recipients with NOTIFY=DELAY) was queued; zero: none yet.
	DelayWarned time.Time `json:"delay_warned,omitzero"`
	// Moved is when the entry came into its current queue, set by the
	// spool on each move between queues; zero when it is still in the
	// queue it was stored in (then Received, or LastAttempt when later,
	// tells its age there).
	Moved time.Time `json:"moved,omitzero"`
	// Returned is set by Spool.Bounce: an operator returned the message
	// to its sender. Its recipients are failed; the scheduler queues the
	// DSN owed and then deletes the message instead of keeping it in dead.
	Returned bool `json:"returned,omitempty"`
	// Quarantine is set when the message went to a quarantine queue by
	// a rule's verdict: which rule, at which stage, and why (the reason
	// of policy.QuarantineBecause); nil otherwise. Release leaves it, as a
	// record of where the message was.
	Quarantine *QuarantineNote `json:"quarantine,omitempty"`

	// Values are the typed results rules stored in the transaction (see
	// policy.Key), as JSON by key name, given back to the postq and
	// delivery rules.
	Values map[string]json.RawMessage `json:"values,omitempty"`

	end int64 // end of the valid records in the entry file (0: unknown)
	// f is the entry file, opened for writing by Load and closed with the
	// message loaded with it: update appends through it, sparing an open
	// and a close per change. A rename moves the file, not the handle;
	// replace, which writes another file, clears it.
	f *os.File
}

// QuarantineNote records why a message was quarantined.
type QuarantineNote struct {
	// Queue is the quarantine queue, "quarantine/<name>".
	Queue string `json:"queue"`
	// Stage is where it was decided: "smtp" (a rule before the message
	// was queued: connect to preq), "postq" or "delivery".
	Stage string `json:"stage"`
	// Rule names the rule whose verdict it was; "" when not known.
	Rule string `json:"rule,omitempty"`
	// Reason is what the rule said (policy.QuarantineBecause); "" when
	// it said nothing.
	Reason string `json:"reason,omitempty"`
	// At is when it was decided.
	At time.Time `json:"at"`
}

// Addr is an address as stored: local part and domain apart, so that no
// quoting is needed.
type Addr struct {
	Local  string `json:"local"`
	Domain string `json:"domain"`
}

func toAddr(a policy.Address) Addr     { return Addr{Local: a.Local, Domain: a.Domain} }
func (a Addr) Address() policy.Address { return policy.Address{Local: a.Local, Domain: a.Domain} }

// String returns the address as policy.Address prints it: local@domain,
// the local part quoted where it needs to be; "" for the null sender.
func (a Addr) String() string { return a.Address().String() }

// Params are the stored MAIL FROM parameters.
type Params struct {
	Size       int64  `json:"size,omitempty"`
	Body       string `json:"body,omitempty"`
	SMTPUTF8   bool   `json:"smtputf8,omitempty"`
	RequireTLS bool   `json:"requiretls,omitempty"`
	Ret        string `json:"ret,omitempty"`
	EnvID      string `json:"envid,omitempty"`
	Auth       string `json:"auth,omitempty"`
}

// RcptState is one recipient with its DSN parameters and delivery state.
type RcptState struct {
	Addr   Addr         `json:"addr"`
	Notify []string     `json:"notify,omitempty"`
	ORCPT  string       `json:"orcpt,omitempty"`
	State  string       `json:"state"`
	Reply  policy.Reply `json:"reply,omitzero"` // last reply for this recipient
	DSN    bool         `json:"dsn,omitempty"`  // a DSN was queued for its final state
}

// Client holds the saved facts of the client connection.
type Client struct {
	ConnID      string    `json:"conn,omitempty"`
	Listener    string    `json:"listener,omitempty"`
	Remote      string    `json:"remote,omitempty"`
	Local       string    `json:"local,omitempty"`
	ReverseName string    `json:"reverse,omitempty"`
	Helo        string    `json:"helo,omitempty"`
	ESMTP       bool      `json:"esmtp,omitempty"`
	TLS         bool      `json:"tls,omitempty"`
	TLSVersion  uint16    `json:"tls_version,omitempty"`
	TLSCipher   uint16    `json:"tls_cipher,omitempty"`
	TLSSNI      string    `json:"tls_sni,omitempty"`
	AuthUser    string    `json:"auth_user,omitempty"`
	AuthMech    string    `json:"auth_mech,omitempty"`
	Started     time.Time `json:"started,omitzero"`
}

// ErrCorrupt is wrapped by errors about an envelope or message that cannot be
// read back; the scheduler moves such entries to the corrupt queue.
var ErrCorrupt = errors.New("queue: corrupt entry")

// NewEnvelope builds the envelope of a transaction being queued at now
// (its arrival time when tx.Received is zero), every recipient pending: the
// accept path of a Store (see Spool.Enqueue). It fails when a value of the
// transaction cannot be kept (see policy.Key).
func NewEnvelope(tx *policy.Transaction, now time.Time) (*Envelope, error) {
	return newEnvelope(tx, now)
}

// ValidID reports whether id can be a queue ID: 1 to 128 characters of
// [A-Za-z0-9._-], not starting with a dot (safe as a file name).
func ValidID(id string) bool { return validID(id) }

// newEnvelope builds the envelope of a transaction being queued. It fails
// when a value of the transaction cannot be kept.
func newEnvelope(tx *policy.Transaction, now time.Time) (*Envelope, error) {
	values, err := tx.EncodeValues()
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	e := &Envelope{
		Values:        values,
		Version:       EnvelopeVersion,
		ID:            tx.ID,
		From:          toAddr(tx.From),
		Received:      tx.Received,
		ForceAccepted: tx.ForceAccepted(),
		Params: Params{
			Size: tx.Params.Size, Body: tx.Params.Body, SMTPUTF8: tx.Params.SMTPUTF8,
			RequireTLS: tx.Params.RequireTLS, Ret: tx.Params.Ret, EnvID: tx.Params.EnvID,
			Auth: tx.Params.Auth,
		},
	}
	if e.Received.IsZero() {
		e.Received = now
	}
	if q := tx.Quarantine(); q != "" {
		rule, reason := tx.QuarantinedBy()
		e.Quarantine = &QuarantineNote{Queue: QuarantinePrefix + q, Stage: "smtp", Rule: rule, Reason: reason, At: now}
	}
	for _, r := range tx.Rcpts {
		e.Rcpts = append(e.Rcpts, RcptState{
			Addr: toAddr(r.Addr), Notify: slices.Clone(r.Notify), ORCPT: r.ORCPT, State: RcptPending,
		})
	}
	if c := tx.Conn; c != nil {
		e.Client = Client{
			ConnID: c.ID, Listener: c.Listener, ReverseName: c.ReverseName,
			Helo: c.Helo, ESMTP: c.ESMTP, AuthUser: c.AuthUser, AuthMech: c.AuthMechanism,
			Started: c.Started,
		}
		if c.Remote.IsValid() {
			e.Client.Remote = c.Remote.String()
		}
		if c.Local.IsValid() {
			e.Client.Local = c.Local.String()
		}
		if c.TLS != nil {
			e.Client.TLS = true
			e.Client.TLSVersion = c.TLS.Version
			e.Client.TLSCipher = c.TLS.CipherSuite
			e.Client.TLSSNI = c.TLS.ServerName
		}
	}
	return e, nil
}

// Transaction rebuilds the transaction the postq and delivery rules see,
// with a Conn holding the saved client facts. Only recipients in one of
// states are included (all recipients when states is empty).
func (e *Envelope) Transaction(states ...string) *policy.Transaction {
	c := &policy.Conn{
		ID: e.Client.ConnID, Listener: e.Client.Listener, ReverseName: e.Client.ReverseName,
		Helo: e.Client.Helo, ESMTP: e.Client.ESMTP, AuthUser: e.Client.AuthUser,
		AuthMechanism: e.Client.AuthMech, Started: e.Client.Started,
	}
	c.Remote, _ = netip.ParseAddrPort(e.Client.Remote)
	c.Local, _ = netip.ParseAddrPort(e.Client.Local)
	if e.Client.TLS {
		c.TLS = &tls.ConnectionState{
			Version: e.Client.TLSVersion, CipherSuite: e.Client.TLSCipher,
			ServerName: e.Client.TLSSNI, HandshakeComplete: true,
		}
	}
	tx := policy.NewTransaction(c, e.ID)
	tx.From = e.From.Address()
	tx.Received = e.Received
	tx.SetForceAccepted(e.ForceAccepted)
	tx.SetEncodedValues(e.Values)
	if e.DSN && e.Values[string(GeneratedKey)] == nil {
		GeneratedKey.Set(tx, Generated{}) // a DSN queued before the mark existed
	}
	tx.Params = policy.MailParams{
		Size: e.Params.Size, Body: e.Params.Body, SMTPUTF8: e.Params.SMTPUTF8,
		RequireTLS: e.Params.RequireTLS, Ret: e.Params.Ret, EnvID: e.Params.EnvID, Auth: e.Params.Auth,
	}
	for _, r := range e.Rcpts {
		if len(states) == 0 || slices.Contains(states, r.State) {
			tx.Rcpts = append(tx.Rcpts, r.Recipient())
		}
	}
	return tx
}

// Recipient returns r as the policy sees it.
func (r RcptState) Recipient() policy.Recipient {
	return policy.Recipient{Addr: r.Addr.Address(), Notify: slices.Clone(r.Notify), ORCPT: r.ORCPT}
}

// notify reports whether r asked for a DSN of the given kind (FAILURE,
// SUCCESS, DELAY). Without NOTIFY only failures are reported (RFC 3461 4.1).
func (r RcptState) notify(kind string) bool {
	if len(r.Notify) == 0 {
		return kind == "FAILURE"
	}
	for _, n := range r.Notify {
		if strings.EqualFold(n, "NEVER") {
			return false
		}
	}
	return slices.ContainsFunc(r.Notify, func(n string) bool { return strings.EqualFold(n, kind) })
}

// pending reports whether some recipient still waits for delivery.
func (e *Envelope) pending() bool {
	return slices.ContainsFunc(e.Rcpts, func(r RcptState) bool { return r.State == RcptPending })
}

// Encode returns the JSON form of e.
func (e *Envelope) Encode() ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeEnvelope parses and validates a stored envelope. Any error wraps
// ErrCorrupt.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	e := &Envelope{}
	if err := json.Unmarshal(b, e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return e, nil
}

func (e *Envelope) validate() error {
	switch {
	case e.Version != EnvelopeVersion:
		return fmt.Errorf("unknown envelope version %d", e.Version)
	case !validID(e.ID):
		return fmt.Errorf("bad id %q", e.ID)
	case e.Size < 0:
		return errors.New("negative size")
	case e.BodyOff < 0 || e.BodyOff > e.Size || e.Head == nil && e.BodyOff != 0:
		return fmt.Errorf("bad body offset %d", e.BodyOff)
	case len(e.Rcpts) == 0:
		return errors.New("no recipients")
	case e.Attempts < 0:
		return errors.New("negative attempts")
	case e.Crashes < 0:
		return errors.New("negative crashes")
	}
	for i, r := range e.Rcpts {
		switch r.State {
		case RcptPending, RcptDelivered, RcptFailed:
		default:
			return fmt.Errorf("recipient %d: bad state %q", i, r.State)
		}
		if r.Addr.Local == "" {
			return fmt.Errorf("recipient %d: empty address", i)
		}
	}
	return nil
}

// validID reports whether id is safe as a file name: 1..128 characters of
// [A-Za-z0-9._-], not starting with a dot.
func validID(id string) bool {
	if id == "" || len(id) > 128 || id[0] == '.' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// HeadBytes returns m's header block as it would be written, with the
// empty line that ends it when m has one: what Envelope.Head holds for a
// message whose header the postq rules edited, its body left where it is
// stored (the stores' Save).
func HeadBytes(m *policy.Message) []byte {
	var b bytes.Buffer
	b.Grow(int(m.Header.Size()) + 2)
	m.Header.WriteTo(&b)
	if m.Size()-m.Header.Size()-m.BodySize() == 2 {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
