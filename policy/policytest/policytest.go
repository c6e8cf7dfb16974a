package policytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

// Defaults for the fields a Session leaves empty.
const (
	DefaultRemote   = "192.0.2.1:49152" // TEST-NET-1: an outside client, never a trusted one
	DefaultLocal    = "192.0.2.254:25"
	DefaultListener = "mta"
	DefaultHelo     = "client.example"
	DefaultAuthMech = "PLAIN"
	ConnID          = "policytest"
	TxID            = "policytest-1"
)

// Session describes one client session. Empty fields take the defaults
// above; From "" is the null sender.
type Session struct {
	Remote      string // client address, "203.0.113.5:4321" or "203.0.113.5"
	Local       string // our address the client connected to
	Listener    string // listener name ("mta", "submission")
	ReverseName string // verified reverse DNS name of Remote, "" for none
	Helo        string // HELO/EHLO argument
	TLS         bool   // the session is encrypted (TLS 1.3) from the start
	// TLSState, when set, is the TLS state rules see (for example with a
	// client certificate); it implies TLS.
	TLSState *tls.ConnectionState

	// AuthUser, when set, makes the client authenticate as that identity
	// with AuthMechanism (default PLAIN) after HELO; the auth rules run.
	AuthUser      string
	AuthMechanism string

	From   string // MAIL FROM path, with or without angle brackets
	Params policy.MailParams
	Rcpts  []string // RCPT TO paths, in order

	// Message is the raw RFC 5322 message sent with DATA. Bare LF line
	// ends are turned into CRLF, and a final CRLF is added when missing,
	// as the SMTP server stores it. "" sends a small message with From,
	// To, Subject, Date and Message-ID fields.
	Message string
}

// RouteResult is the outcome of the delivery stage for one recipient.
type RouteResult struct {
	Rcpt   policy.Recipient
	Route  policy.Route // as the delivery rules left it; zero: the queue's default
	Result policy.Result
}

// Outcome is what a session got from the chain. Results of stages that
// did not run are zero.
type Outcome struct {
	Conn *policy.Conn
	// Tx is the transaction; nil when the session stopped before MAIL.
	// From postq on it is the one the queue gives back (see Run).
	Tx *policy.Transaction

	Connect, Helo, Auth, Mail policy.Result
	Rcpts                     []policy.Result    // one per Session.Rcpts, in order
	Accepted                  []policy.Recipient // the recipients accepted, in order
	PreQ, PostQ               policy.Result
	Delivery                  []RouteResult // one per accepted recipient, unless quarantined

	// Message is the message after the preq and postq rules' edits; nil
	// when the session stopped before DATA.
	Message *policy.Message
	// Quarantine is the quarantine queue the message went to, or "".
	Quarantine string
	// Stopped is the stage at which the session ended because of a deny
	// (StageRcpt: no recipient was accepted), or RanThrough.
	Stopped policy.Stage
}

// RanThrough is Outcome.Stopped of a session no stage stopped.
const RanThrough policy.Stage = 0

// Final returns the result of the stage the session stopped at, or the
// preq result (the reply to DATA) when it ran through.
func (o *Outcome) Final() policy.Result {
	switch o.Stopped {
	case policy.StageConnect:
		return o.Connect
	case policy.StageHelo:
		return o.Helo
	case policy.StageAuth:
		return o.Auth
	case policy.StageMail:
		return o.Mail
	case policy.StageRcpt:
		if n := len(o.Rcpts); n > 0 {
			return o.Rcpts[n-1]
		}
		return policy.Result{}
	case policy.StagePostQ:
		return o.PostQ
	}
	return o.PreQ
}

// Run plays s through chain like an SMTP server and the queue would: the
// connect rules, helo, auth when s.AuthUser is set, mail, rcpt for each
// recipient, then (when one was accepted) preq, postq, and the delivery
// rules for each accepted recipient unless the message was quarantined.
// Before preq, as the SMTP server does, a Received field and, above it, the
// fields rules added to tx.Header are put on top of the message. Between
// preq and postq the transaction goes through what the queue keeps of it,
// as in a server: the values rules stored with a policy.Key come back
// decoded from JSON, and tx.Header is empty (its fields are in the message).
//
// An error means s itself is wrong (an address that does not parse, a
// message whose header is too large), or that the queue would refuse the
// message (a stored value JSON cannot encode), not that the chain denied.
func Run(ctx context.Context, chain *policy.Chain, s Session) (*Outcome, error) {
	conn, err := newConn(s)
	if err != nil {
		return nil, err
	}
	from, err := policy.ParseAddress(s.From)
	if err != nil {
		return nil, fmt.Errorf("policytest: From %q: %w", s.From, err)
	}
	rcpts := make([]policy.Recipient, len(s.Rcpts))
	for i, r := range s.Rcpts {
		a, err := policy.ParseAddress(r)
		if err != nil || a.IsNull() {
			return nil, fmt.Errorf("policytest: Rcpts[%d] %q: %w", i, r, addrErr(err))
		}
		rcpts[i] = policy.Recipient{Addr: a}
	}

	o := &Outcome{Conn: conn}
	if o.Connect = chain.EvalConnect(ctx, conn); !o.Connect.Accepted() {
		o.Stopped = policy.StageConnect
		return o, nil
	}
	conn.ESMTP = true
	if o.Helo = chain.EvalHelo(ctx, conn, orDefault(s.Helo, DefaultHelo)); !o.Helo.Accepted() {
		o.Stopped = policy.StageHelo
		return o, nil
	}
	if s.AuthUser != "" {
		mech := orDefault(s.AuthMechanism, DefaultAuthMech)
		if o.Auth = chain.EvalAuth(ctx, conn, policy.AuthInfo{Mechanism: mech, Identity: s.AuthUser}); !o.Auth.Accepted() {
			o.Stopped = policy.StageAuth
			return o, nil
		}
		conn.AuthUser, conn.AuthMechanism = s.AuthUser, mech
	}

	tx := policy.NewTransaction(conn, TxID)
	tx.From, tx.Params = from, s.Params
	o.Tx = tx
	if o.Mail = chain.EvalMail(ctx, tx); !o.Mail.Accepted() {
		o.Stopped = policy.StageMail
		return o, nil
	}
	for _, rcpt := range rcpts {
		r := chain.EvalRcpt(ctx, tx, rcpt)
		o.Rcpts = append(o.Rcpts, r)
		if r.Accepted() {
			tx.Rcpts = append(tx.Rcpts, rcpt)
		}
	}
	o.Accepted = tx.Rcpts
	if len(tx.Rcpts) == 0 {
		o.Stopped = policy.StageRcpt
		return o, nil
	}

	raw := s.Message
	if raw == "" {
		raw = defaultMessage(tx)
	}
	data := []byte(NormalizeCRLF(raw))
	m, err := policy.NewMessage(bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		return nil, fmt.Errorf("policytest: Message: %w", err)
	}
	m.Header.Add("Received", received(tx))
	fields := tx.Header.Fields()
	for i := len(fields) - 1; i >= 0; i-- {
		m.Header.AddRaw(append([]byte(nil), fields[i].Raw...))
	}
	o.Message = m
	if o.PreQ = chain.EvalPreQ(ctx, tx, m); !o.PreQ.Accepted() {
		o.Stopped = policy.StagePreQ
		return o, nil
	}
	// The postq and delivery rules see the transaction the queue rebuilds
	// from its envelope: rules' typed values come back from their JSON,
	// and the fields added before DATA are in the message only.
	if tx, err = requeued(tx); err != nil {
		return nil, err
	}
	o.Tx = tx
	if o.PostQ = chain.EvalPostQ(ctx, tx, m); !o.PostQ.Accepted() {
		o.Stopped = policy.StagePostQ
		return o, nil
	}
	if o.Quarantine = tx.Quarantine(); o.Quarantine != "" {
		return o, nil
	}
	for _, rcpt := range tx.Rcpts {
		rr := RouteResult{Rcpt: rcpt}
		rr.Result = chain.EvalDelivery(ctx, tx, rcpt, &rr.Route)
		o.Delivery = append(o.Delivery, rr)
	}
	return o, nil
}

// requeued is tx as the queue gives it back after queueing.
func requeued(tx *policy.Transaction) (*policy.Transaction, error) {
	values, err := tx.EncodeValues()
	if err != nil {
		return nil, fmt.Errorf("policytest: the queue would refuse the message: %w", err)
	}
	conn := *tx.Conn
	out := policy.NewTransaction(&conn, tx.ID)
	out.From, out.Params, out.Received = tx.From, tx.Params, tx.Received
	out.Rcpts = slices.Clone(tx.Rcpts)
	out.SetForceAccepted(tx.ForceAccepted())
	out.SetQuarantine(tx.Quarantine())
	out.SetEncodedValues(values)
	return out, nil
}

// received is the trace field the SMTP server writes on top, with a fixed
// date so that tests see stable bytes.
func received(tx *policy.Transaction) string {
	c := tx.Conn
	proto := "ESMTP"
	if c.TLS != nil {
		proto += "S"
	}
	if c.Authenticated() {
		proto += "A"
	}
	from := c.Helo
	if c.ReverseName != "" {
		from += " (" + strings.TrimSuffix(c.ReverseName, ".") + " [" + c.Remote.Addr().String() + "])"
	} else {
		from += " ([" + c.Remote.Addr().String() + "])"
	}
	return fmt.Sprintf("from %s by policytest.invalid with %s id %s; Mon, 01 Jan 2024 00:00:00 +0000", from, proto, tx.ID)
}

func addrErr(err error) error {
	if err == nil {
		return policy.ErrAddressSyntax
	}
	return err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func parseAddrPort(s, def string) (netip.AddrPort, error) {
	s = orDefault(s, def)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, 0), nil
}

// newConn builds the connection as the connect stage sees it: no HELO, no
// authentication yet.
func newConn(s Session) (*policy.Conn, error) {
	remote, err := parseAddrPort(s.Remote, DefaultRemote)
	if err != nil {
		return nil, fmt.Errorf("policytest: Remote %q: %w", s.Remote, err)
	}
	local, err := parseAddrPort(s.Local, DefaultLocal)
	if err != nil {
		return nil, fmt.Errorf("policytest: Local %q: %w", s.Local, err)
	}
	c := &policy.Conn{
		ID:          ConnID,
		Listener:    orDefault(s.Listener, DefaultListener),
		Remote:      remote,
		Local:       local,
		ReverseName: s.ReverseName,
	}
	switch {
	case s.TLSState != nil:
		c.TLS = s.TLSState
	case s.TLS:
		c.TLS = &tls.ConnectionState{
			Version:           tls.VersionTLS13,
			CipherSuite:       tls.TLS_AES_128_GCM_SHA256,
			HandshakeComplete: true,
		}
	}
	return c, nil
}

// Conn returns the connection as rules of the mail and later stages see
// it: HELO done and, when s.AuthUser is set, authenticated. It panics if
// s.Remote or s.Local does not parse.
func Conn(s Session) *policy.Conn {
	c, err := newConn(s)
	if err != nil {
		panic(err)
	}
	c.Helo, c.ESMTP = orDefault(s.Helo, DefaultHelo), true
	if s.AuthUser != "" {
		c.AuthUser, c.AuthMechanism = s.AuthUser, orDefault(s.AuthMechanism, DefaultAuthMech)
	}
	return c
}

// Transaction returns a transaction on Conn(s) with s.From, s.Params, and
// every address of s.Rcpts as an accepted recipient (to test an rcpt rule,
// list there the recipients accepted before the one passed to the rule).
// It panics if an address does not parse.
func Transaction(s Session) *policy.Transaction {
	tx := policy.NewTransaction(Conn(s), TxID)
	tx.From = policy.MustParseAddress(s.From)
	tx.Params = s.Params
	for _, r := range s.Rcpts {
		tx.Rcpts = append(tx.Rcpts, Recipient(r))
	}
	return tx
}

// Recipient returns a recipient for addr; it panics if addr does not parse.
func Recipient(addr string) policy.Recipient {
	a := policy.MustParseAddress(addr)
	if a.IsNull() {
		panic("policytest: null recipient")
	}
	return policy.Recipient{Addr: a}
}

// Message returns the message raw (line ends normalized as in
// Session.Message) stored in a file under tb.TempDir, as the SMTP server
// spools it. It is closed when the test ends.
func Message(tb testing.TB, raw string) *policy.Message {
	tb.Helper()
	data := NormalizeCRLF(raw)
	path := filepath.Join(tb.TempDir(), "message.eml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		tb.Fatalf("policytest: %v", err)
	}
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("policytest: %v", err)
	}
	m, err := policy.NewMessage(f, int64(len(data)), f)
	if err != nil {
		f.Close()
		tb.Fatalf("policytest: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// NormalizeCRLF turns every bare LF of raw into CRLF and makes raw end with
// CRLF, as a message received over SMTP is stored. Bare CRs are kept.
func NormalizeCRLF(raw string) string {
	if !hasBareLF(raw) && strings.HasSuffix(raw, "\r\n") {
		return raw
	}
	// A line at a time: a byte at a time was most of a benchmark's harness
	// cost. Lines end at each LF, so an LF follows a CR only when its line
	// (never empty then) ends with one.
	var b strings.Builder
	b.Grow(len(raw) + len(raw)/32 + 2)
	rest := raw
	for {
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i])
		if i == 0 || rest[i-1] != '\r' {
			b.WriteByte('\r')
		}
		b.WriteByte('\n')
		rest = rest[i+1:]
	}
	if !strings.HasSuffix(b.String(), "\r\n") {
		b.WriteString("\r\n")
	}
	return b.String()
}

// hasBareLF reports whether an LF of s follows anything but a CR.
func hasBareLF(s string) bool {
	for {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return false
		}
		if i == 0 || s[i-1] != '\r' {
			return true
		}
		s = s[i+1:]
	}
}

func defaultMessage(tx *policy.Transaction) string {
	var b strings.Builder
	if !tx.From.IsNull() {
		fmt.Fprintf(&b, "From: <%s>\r\n", tx.From)
	}
	to := make([]string, len(tx.Rcpts))
	for i, r := range tx.Rcpts {
		to[i] = r.Addr.Path()
	}
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(to, ", "))
	b.WriteString("Subject: policytest\r\n")
	b.WriteString("Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n")
	b.WriteString("Message-ID: <policytest@policytest.invalid>\r\n")
	b.WriteString("\r\nTest message.\r\n")
	return b.String()
}

// Recorder records the decisions of a chain, in order. Attach it as the
// chain's observer (chain.Observer = rec.Observe). It is safe for
// concurrent use.
type Recorder struct {
	mu        sync.Mutex
	decisions []policy.Decision
}

// Observe records d; it is the observer function.
func (r *Recorder) Observe(d policy.Decision) {
	r.mu.Lock()
	r.decisions = append(r.decisions, d)
	r.mu.Unlock()
}

// Decisions returns a copy of the decisions recorded so far.
func (r *Recorder) Decisions() []policy.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]policy.Decision(nil), r.decisions...)
}

// Rules returns the names of the rules that ran, in order, one entry per
// run (an rcpt rule runs once per recipient).
func (r *Recorder) Rules() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.decisions))
	for i, d := range r.decisions {
		out[i] = d.Rule
	}
	return out
}

// Ran reports whether the rule named name ran at least once.
func (r *Recorder) Ran(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.decisions {
		if d.Rule == name {
			return true
		}
	}
	return false
}

// Reset forgets the decisions recorded so far.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.decisions = nil
	r.mu.Unlock()
}
