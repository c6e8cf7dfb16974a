package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// DefaultAction is what the rules of a milter do when the milter cannot
// be used: it is down, slow (a timeout), or broke the protocol. It is
// Postfix's milter_default_action.
type DefaultAction uint8

const (
	// Tempfail refuses with 451 4.7.1 at MAIL, RCPT or the end of DATA:
	// the client retries later, and no message the milter did not see
	// gets a 250. The default.
	Tempfail DefaultAction = iota
	// Accept goes on without the milter, with a warning in the log.
	Accept
)

func (a DefaultAction) String() string {
	switch a {
	case Tempfail:
		return "tempfail"
	case Accept:
		return "accept"
	}
	return fmt.Sprintf("DefaultAction(%d)", uint8(a))
}

// ParseDefaultAction reads "tempfail" or "accept" (any case), as a
// command-line flag gives it.
func ParseDefaultAction(s string) (DefaultAction, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tempfail":
		return Tempfail, nil
	case "accept":
		return Accept, nil
	}
	return 0, fmt.Errorf("milter: unknown default action %q (want tempfail or accept)", s)
}

// Defaults of Options.
const (
	DefaultConnectTimeout = 30 * time.Second // Postfix's milter_connect_timeout
	DefaultCommandTimeout = 30 * time.Second // Postfix's milter_command_timeout
	DefaultEOMTimeout     = 5 * time.Minute  // Postfix's milter_content_timeout
	DefaultIdleTimeout    = 10 * time.Second
	DefaultQuarantine     = "milter"
)

// Options configures one milter. Zero fields take the defaults given.
// The Options must not be changed once New returned.
type Options struct {
	// Addr is where the milter listens, in Postfix's syntax (see
	// ParseAddr): "inet:127.0.0.1:11332" or "unix:/path". Required.
	Addr string
	// Name names the milter in rule names ("milter:<Name>:mail") and
	// logs. Default: Addr.
	Name string

	// ConnectTimeout bounds dialling the milter (default 30s),
	// CommandTimeout each command and the negotiation (default 30s),
	// EOMTimeout the end of a message, when the milter scans it
	// (default 5 min). The rule's context, which the policy.Chain bounds
	// with its RuleTimeout (30s by default), bounds them all: raise
	// RuleTimeout with EOMTimeout for a slow scanner.
	ConnectTimeout, CommandTimeout, EOMTimeout time.Duration
	// IdleTimeout is how long the milter connection of an SMTP session
	// waits for the session's next stage before it is closed (default
	// 10s); the session's end (policy.Conn.Closed) closes it at once. A
	// later stage of a session whose milter connection was closed opens
	// a new one and replays connect, HELO, MAIL and the recipients to it.
	IdleTimeout time.Duration

	// DefaultAction is what happens when the milter cannot be used:
	// Tempfail (the zero value) or Accept.
	DefaultAction DefaultAction
	// Quarantine is the quarantine queue of a message the milter
	// quarantines (SMFIR_QUARANTINE). Default "milter".
	Quarantine string

	// Hostname is our name, macro j. Default: os.Hostname().
	Hostname string
	// DaemonName is macro {daemon_name}. Default "mtakit".
	DaemonName string
	// TempDir holds a message whose body the milter replaced, when it
	// is larger than 1 MiB (smaller ones stay in memory). Default:
	// os.TempDir(). The file is unlinked at once.
	TempDir string

	// Logger receives the milter's verdicts (info), modifications
	// (debug) and failures (warn). nil means slog.Default().
	Logger *slog.Logger
}

// Milter is a milter the rules talk to. Create it with New, register its
// rules with Register (or one by one), and Close it when the server
// stops. It is safe for concurrent use: each SMTP session has its own
// milter connection.
type Milter struct {
	opts Options
	addr Addr
	name string
	log  *slog.Logger

	mu       sync.Mutex
	sessions map[any]*session
	closed   bool
	done     chan struct{} // closed by Close
}

// New checks o and returns the Milter. It does not connect: each SMTP
// session connects at its first stage.
func New(o Options) (*Milter, error) {
	a, err := ParseAddr(o.Addr)
	if err != nil {
		return nil, err
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = DefaultCommandTimeout
	}
	if o.EOMTimeout <= 0 {
		o.EOMTimeout = DefaultEOMTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.DefaultAction > Accept {
		return nil, fmt.Errorf("milter: unknown default action %d", o.DefaultAction)
	}
	if o.Quarantine == "" {
		o.Quarantine = DefaultQuarantine
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
		if o.Hostname == "" {
			o.Hostname = "localhost"
		}
	}
	if o.DaemonName == "" {
		o.DaemonName = "mtakit"
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	m := &Milter{opts: o, addr: a, name: o.Name, log: o.Logger, sessions: map[any]*session{}, done: make(chan struct{})}
	if m.name == "" {
		m.name = o.Addr
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	return m, nil
}

// Name returns the milter's name (Options.Name, or its address).
func (m *Milter) Name() string { return m.name }

// Addr returns where the milter listens.
func (m *Milter) Addr() Addr { return m.addr }

// Close closes every milter connection (sending QUIT) and makes the rules
// apply the default action from then on. It is idempotent.
func (m *Milter) Close() error {
	m.mu.Lock()
	if !m.closed {
		close(m.done)
	}
	m.closed = true
	var idle []*session
	for k, s := range m.sessions {
		if !s.busy {
			idle = append(idle, s)
			delete(m.sessions, k)
		}
		s.timer.Stop()
	}
	m.mu.Unlock()
	for _, s := range idle {
		s.close()
	}
	return nil
}

// errClosed is the failure of a rule of a closed Milter.
var errClosed = errors.New("milter: closed")

// DiscardedKey marks a transaction a milter discarded (SMFIR_DISCARD): the
// value is the milter's name. The client got its 250; DiscardRule routes
// every recipient to the queue's "drop" transport.
const DiscardedKey policy.Key[string] = "milter.discarded"

// DiscardRule returns the delivery rule that drops a message a milter
// discarded: it routes each recipient of a transaction marked with
// DiscardedKey to the "drop" transport (queue.DropTransport) and accepts.
// Register it before the delivery rules that route, as Register does.
func DiscardRule() policy.DeliveryRule {
	return func(_ context.Context, tx *policy.Transaction, _ policy.Recipient, route *policy.Route) policy.Verdict {
		if _, ok := DiscardedKey.Get(tx); !ok {
			return policy.Next()
		}
		*route = policy.Route{Transport: "drop"}
		return policy.Accept()
	}
}

// DiscardRuleName is the name under which Register registers DiscardRule.
const DiscardRuleName = "milter:discard"

// Register registers the rules of each milter, in the order given, at
// every stage: connect, helo, mail, rcpt and preq (named
// "milter:<name>:<stage>"), and DiscardRule at delivery (named
// DiscardRuleName). Call it once per chain, where the milters should
// run in each stage: rules registered after it see the message as the
// milters left it; its rcpt rules must come before a rule that accepts
// the recipient (relay.CheckRelay), which ends the stage, and its
// delivery rule before the rules that route. It panics, as the chain's
// registration does, if a name is taken.
func Register(chain *policy.Chain, ms ...*Milter) {
	for _, m := range ms {
		chain.Connect("milter:"+m.name+":connect", m.ConnectRule())
	}
	for _, m := range ms {
		chain.Helo("milter:"+m.name+":helo", m.HeloRule())
	}
	for _, m := range ms {
		chain.Mail("milter:"+m.name+":mail", m.MailRule())
	}
	for _, m := range ms {
		chain.Rcpt("milter:"+m.name+":rcpt", m.RcptRule())
	}
	for _, m := range ms {
		chain.PreQ("milter:"+m.name+":preq", m.MessageRule())
	}
	if len(ms) > 0 {
		chain.Delivery(DiscardRuleName, DiscardRule())
	}
}

// ConnectRule returns the rule that opens the session's milter connection
// and sends it the client's address and name. A milter failing here is
// not refused at once: the mail rule refuses (Tempfail) or goes on
// (Accept), as Postfix waits for MAIL.
func (m *Milter) ConnectRule() policy.ConnectRule {
	return func(ctx context.Context, c *policy.Conn) policy.Verdict {
		return m.with(ctx, c, nil, policy.StageConnect, func(s *session) policy.Verdict { return s.connect(ctx, c) })
	}
}

// HeloRule returns the rule that sends HELO/EHLO (again after STARTTLS).
func (m *Milter) HeloRule() policy.HeloRule {
	return func(ctx context.Context, c *policy.Conn, _ string) policy.Verdict {
		return m.with(ctx, c, nil, policy.StageHelo, func(s *session) policy.Verdict { return s.helo(ctx, c) })
	}
}

// MailRule returns the rule that sends MAIL FROM with its ESMTP
// parameters (and, when earlier stages were skipped, what came before).
func (m *Milter) MailRule() policy.MailRule {
	return func(ctx context.Context, tx *policy.Transaction) policy.Verdict {
		return m.with(ctx, tx.Conn, tx, policy.StageMail, func(s *session) policy.Verdict { return s.mail(ctx, tx) })
	}
}

// RcptRule returns the rule that sends one RCPT TO; the milter's refusal
// refuses that recipient only.
func (m *Milter) RcptRule() policy.RcptRule {
	return func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		return m.with(ctx, tx.Conn, tx, policy.StageRcpt, func(s *session) policy.Verdict { return s.rcpt(ctx, tx, rcpt) })
	}
}

// MessageRule returns the preq rule that sends the message (header
// fields, end of header, body in chunks, end of message) and applies the
// milter's verdict and modifications. Used without the envelope rules,
// or at postq (on a transaction rebuilt from the queue), it runs a whole
// milter session for the message: connect, HELO, MAIL and the
// recipients from the transaction, then the message, then QUIT.
func (m *Milter) MessageRule() policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, msg *policy.Message) policy.Verdict {
		return m.with(ctx, tx.Conn, tx, policy.StagePreQ, func(s *session) policy.Verdict { return s.message(ctx, tx, msg) })
	}
}

// with runs fn on the session of conn (of tx when conn is nil), creating
// it, and then keeps it for the session's next stage, or closes it.
func (m *Milter) with(ctx context.Context, conn *policy.Conn, tx *policy.Transaction, stage policy.Stage, fn func(*session) policy.Verdict) policy.Verdict {
	var key any = conn
	if conn == nil {
		if tx == nil {
			return policy.Next()
		}
		key = tx
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return m.unavailable(ctx, stage, tx, errClosed, false)
	}
	s := m.sessions[key]
	created := s == nil
	if created {
		s = &session{m: m, key: key, conn: conn}
		s.timer = time.AfterFunc(time.Hour, func() { m.expire(s) })
		m.sessions[key] = s
		if conn != nil && conn.Closed != nil {
			// The SMTP session's end closes the milter's at once (QUIT);
			// the idle timer stays for a rule running at that moment.
			go func() {
				select {
				case <-conn.Closed:
					m.closeSession(conn)
				case <-m.done:
				}
			}()
		}
	}
	s.timer.Stop()
	if s.busy {
		// Two rules of one connection at once: not something smtp does.
		m.mu.Unlock()
		return policy.Fail(errors.New("milter: session in use by another rule"))
	}
	s.busy = true
	m.mu.Unlock()

	end := s.beginRule(ctx)
	v := s.run(ctx, stage, fn)
	end()

	m.mu.Lock()
	s.busy = false
	// A session that starts at preq ends there: the message rule used
	// alone (at postq, where each transaction has a Conn of its own
	// rebuilt from the queue, or without the envelope rules) runs one
	// milter session per message.
	drop := m.closed || (created && stage == policy.StagePreQ)
	if drop {
		delete(m.sessions, key)
	} else {
		s.timer.Reset(m.opts.IdleTimeout)
	}
	m.mu.Unlock()
	if drop {
		s.close()
	}
	return v
}

// expire closes a session whose SMTP session went quiet.
func (m *Milter) expire(s *session) {
	m.mu.Lock()
	if s.busy || m.sessions[s.key] != s {
		m.mu.Unlock()
		return
	}
	delete(m.sessions, s.key)
	m.mu.Unlock()
	s.close()
}

// sessionCount reports the number of sessions kept (for tests).
func (m *Milter) sessionCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Replies.
var (
	replyTempfail = policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "Service unavailable - try again later"}
	replyReject   = policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "Command rejected"}
)

// unavailable is the verdict when the milter failed with err: the
// default action. At connect and helo it is always Next: the mail rule
// decides (the session remembers the failure).
//
// The failure is logged at warn level when it happens (first), at debug
// level at the later stages that apply the default action for it.
func (m *Milter) unavailable(ctx context.Context, stage policy.Stage, tx *policy.Transaction, err error, first bool) policy.Verdict {
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	log := func(msg string) {
		if !m.log.Enabled(ctx, level) {
			return
		}
		attrs := []slog.Attr{slog.String("milter", m.name), slog.String("stage", stage.String()), slog.String("error", err.Error())}
		if tx != nil {
			attrs = append(attrs, slog.String("id", tx.ID))
		}
		m.log.LogAttrs(ctx, level, msg, attrs...)
	}
	if m.opts.DefaultAction == Accept {
		log("milter unavailable; default action accept: going on without it")
		return policy.Next()
	}
	if stage == policy.StageConnect || stage == policy.StageHelo {
		log("milter unavailable; mail will be deferred (default action tempfail)")
		return policy.Next()
	}
	log("milter unavailable; deferring (default action tempfail)")
	return policy.Verdict{Kind: policy.KindDeny, Reply: replyTempfail}
}

// closeSession closes the milter connection of an SMTP session now.
func (m *Milter) closeSession(c *policy.Conn) {
	m.mu.Lock()
	s := m.sessions[c]
	if s == nil || s.busy {
		m.mu.Unlock()
		return
	}
	delete(m.sessions, c)
	s.timer.Stop()
	m.mu.Unlock()
	s.close()
}
