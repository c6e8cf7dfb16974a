package policy

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/mtakit/mtakit/internal/lazyctx"
)

// Rule types, one per stage, so that a rule reads only what exists at its
// stage: there is no message at rcpt and no recipient list at connect.
type (
	// ConnectRule runs after TCP accept, before the greeting.
	ConnectRule func(ctx context.Context, c *Conn) Verdict
	// HeloRule runs at HELO/EHLO; c.Helo is already set to helo.
	HeloRule func(ctx context.Context, c *Conn, helo string) Verdict
	// AuthRule runs after the Authenticator verified the credentials; a deny
	// turns the success into a failed AUTH.
	AuthRule func(ctx context.Context, c *Conn, a AuthInfo) Verdict
	// MailRule runs at MAIL FROM; tx.From and tx.Params are set.
	MailRule func(ctx context.Context, tx *Transaction) Verdict
	// RcptRule runs at each RCPT TO; rcpt is the current recipient, tx.Rcpts
	// the ones accepted before it.
	RcptRule func(ctx context.Context, tx *Transaction, rcpt Recipient) Verdict
	// MessageRule runs with the message: at preq (before queueing, the
	// client waits for the reply) and at postq (after queueing).
	MessageRule func(ctx context.Context, tx *Transaction, m *Message) Verdict
	// DeliveryRule runs per recipient before delivery and chooses its route
	// by setting *route.
	DeliveryRule func(ctx context.Context, tx *Transaction, rcpt Recipient, route *Route) Verdict
)

// Actions: functions that act (log, add a header) without deciding. The
// adapters below make rules of them that always say Next, so an action can
// never let mail through by mistake by returning a verdict nobody reads (the
// trap of vSMTP's actions).

// ConnectAction makes a connect rule of fn that always goes on.
func ConnectAction(fn func(ctx context.Context, c *Conn)) ConnectRule {
	return func(ctx context.Context, c *Conn) Verdict { fn(ctx, c); return Next() }
}

// MailAction makes a mail rule of fn that always goes on.
func MailAction(fn func(ctx context.Context, tx *Transaction)) MailRule {
	return func(ctx context.Context, tx *Transaction) Verdict { fn(ctx, tx); return Next() }
}

// RcptAction makes an rcpt rule of fn that always goes on.
func RcptAction(fn func(ctx context.Context, tx *Transaction, rcpt Recipient)) RcptRule {
	return func(ctx context.Context, tx *Transaction, rcpt Recipient) Verdict { fn(ctx, tx, rcpt); return Next() }
}

// MessageAction makes a preq/postq rule of fn that always goes on.
func MessageAction(fn func(ctx context.Context, tx *Transaction, m *Message)) MessageRule {
	return func(ctx context.Context, tx *Transaction, m *Message) Verdict { fn(ctx, tx, m); return Next() }
}

// Decision is the trace of one rule's verdict, given to the observer and to
// the log.
type Decision struct {
	Stage    Stage
	Rule     string
	Verdict  Verdict
	Duration time.Duration
	ConnID   string
	TxID     string
}

// Result is the outcome of one stage: the verdict that decided (or the
// stage's default), the rule that gave it ("" for the default), and the
// reply to send to the client.
type Result struct {
	Verdict Verdict
	Rule    string
	Reply   Reply
}

// Accepted reports whether the stage accepted (Next, Accept, ForceAccept,
// Quarantine or Info).
func (r Result) Accepted() bool { return r.Verdict.Kind != KindDeny }

// defaultRcptDeny is the verdict for a recipient no rule accepted, when
// Chain.RcptDefault is unset.
var defaultRcptDeny = Verdict{Kind: KindDeny, Reply: Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}}

// defaultRuleTimeout bounds a rule's run when Chain.RuleTimeout is unset.
const defaultRuleTimeout = 30 * time.Second

type named[R any] struct {
	name string
	rule R
}

// Chain holds the rules of every stage and evaluates them. Set its fields and
// register rules while setting up, then share the Chain between sessions:
// evaluation is safe for concurrent use, registration and changes to the
// fields are not. The zero Chain is an empty chain ready for use, and so is
// the one NewChain returns.
//
// Within a stage rules run in registration order until one decides (any
// verdict but Next and Info). A rule that panics, or returns Fail, gives 451
// 4.3.0 and an error log entry; a panic never reaches the server.
type Chain struct {
	// Logger receives decisions (debug level) and rule failures (error
	// level). nil means slog.Default().
	Logger *slog.Logger

	// Observer, when set, is called after every rule with its decision, for
	// metrics or tracing. It must be fast and safe for concurrent use.
	Observer func(Decision)

	// RuleTimeout bounds each rule's run: the rule's context is cancelled
	// after it. Zero means 30 seconds. A rule that ignores its context
	// still runs to the end, but its DNS lookups and delegations are cut
	// short.
	RuleTimeout time.Duration

	// RcptDefault is the verdict given to a recipient when every rcpt rule
	// said Next. The zero Verdict (Next) means the default: deny with 554
	// 5.7.1 "Relay access denied", so a chain with no relay rule, or one
	// that forgets a case, is never an open relay. Only a rule returning
	// Accept (or ForceAccept) admits a recipient.
	RcptDefault Verdict

	connect  []named[ConnectRule]
	helo     []named[HeloRule]
	auth     []named[AuthRule]
	mail     []named[MailRule]
	rcpt     []named[RcptRule]
	preq     []named[MessageRule]
	postq    []named[MessageRule]
	delivery []named[DeliveryRule]

	names map[string]Stage
}

// NewChain returns an empty chain, the same as new(Chain).
func NewChain() *Chain { return &Chain{} }

func (c *Chain) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// Every registration method panics when name is empty or already names a
// rule of the chain (in any stage): rule names are what logs, metrics and
// traces report, so each must say which rule decided. Registration happens
// while the program sets up, where a panic is a bug found at once.
func (c *Chain) checkName(name string, s Stage) {
	if name == "" {
		panic("policy: rule registered without a name")
	}
	if prev, ok := c.names[name]; ok {
		panic(fmt.Sprintf("policy: rule name %q registered twice (stages %s and %s)", name, prev, s))
	}
	if c.names == nil {
		c.names = make(map[string]Stage)
	}
	c.names[name] = s
}

// Connect registers a connect rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Connect(name string, r ConnectRule) *Chain {
	c.checkName(name, StageConnect)
	c.connect = append(c.connect, named[ConnectRule]{name, r})
	return c
}

// Helo registers a helo rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Helo(name string, r HeloRule) *Chain {
	c.checkName(name, StageHelo)
	c.helo = append(c.helo, named[HeloRule]{name, r})
	return c
}

// Auth registers an auth rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Auth(name string, r AuthRule) *Chain {
	c.checkName(name, StageAuth)
	c.auth = append(c.auth, named[AuthRule]{name, r})
	return c
}

// Mail registers a mail rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Mail(name string, r MailRule) *Chain {
	c.checkName(name, StageMail)
	c.mail = append(c.mail, named[MailRule]{name, r})
	return c
}

// Rcpt registers an rcpt rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Rcpt(name string, r RcptRule) *Chain {
	c.checkName(name, StageRcpt)
	c.rcpt = append(c.rcpt, named[RcptRule]{name, r})
	return c
}

// PreQ registers a rule that runs after DATA, before the message is queued,
// under name, and returns c. It panics if name is empty or already
// registered.
func (c *Chain) PreQ(name string, r MessageRule) *Chain {
	c.checkName(name, StagePreQ)
	c.preq = append(c.preq, named[MessageRule]{name, r})
	return c
}

// PostQ registers a rule that runs after the message is queued, under name,
// and returns c. It panics if name is empty or already registered.
func (c *Chain) PostQ(name string, r MessageRule) *Chain {
	c.checkName(name, StagePostQ)
	c.postq = append(c.postq, named[MessageRule]{name, r})
	return c
}

// Delivery registers a delivery rule under name, and returns c.
// It panics if name is empty or already registered.
func (c *Chain) Delivery(name string, r DeliveryRule) *Chain {
	c.checkName(name, StageDelivery)
	c.delivery = append(c.delivery, named[DeliveryRule]{name, r})
	return c
}

// Rules returns the names of the rules of stage s, in registration order.
func (c *Chain) Rules(s Stage) []string {
	switch s {
	case StageConnect:
		return namesOf(c.connect)
	case StageHelo:
		return namesOf(c.helo)
	case StageAuth:
		return namesOf(c.auth)
	case StageMail:
		return namesOf(c.mail)
	case StageRcpt:
		return namesOf(c.rcpt)
	case StagePreQ:
		return namesOf(c.preq)
	case StagePostQ:
		return namesOf(c.postq)
	case StageDelivery:
		return namesOf(c.delivery)
	}
	return nil
}

func namesOf[R any](rs []named[R]) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.name
	}
	return out
}

// Default positive replies per stage.
var defaultReplies = map[Stage]Reply{
	StageConnect:  {Code: 220, Text: "ESMTP ready"},
	StageHelo:     {Code: 250, Text: "Hello"},
	StageAuth:     {Code: 235, Enhanced: "2.7.0", Text: "Authentication succeeded"},
	StageMail:     {Code: 250, Enhanced: "2.1.0", Text: "Sender OK"},
	StageRcpt:     {Code: 250, Enhanced: "2.1.5", Text: "Recipient OK"},
	StagePreQ:     {Code: 250, Enhanced: "2.0.0", Text: "OK: queued"},
	StagePostQ:    {Code: 250, Enhanced: "2.0.0", Text: "OK"},
	StageDelivery: {Code: 250, Enhanced: "2.0.0", Text: "OK"},
}

// DefaultReply returns the positive reply of stage s when no rule set one.
func DefaultReply(s Stage) Reply { return defaultReplies[s] }

// run evaluates rules of one stage. call runs one rule under its context.
// When skipped is not Next, an earlier force-accept or quarantine decided
// the stage: no rule runs and skipped is the verdict.
func run[R any](ctx context.Context, c *Chain, s Stage, rules []named[R], skipped Verdict, connID, txID string, call func(context.Context, R) Verdict) Result {
	res := Result{Reply: defaultReplies[s]}
	if skipped.Kind != KindNext {
		res.Verdict, res.Rule = skipped, "(skipped)"
		return res
	}
	for _, r := range rules {
		v := c.invoke(ctx, s, r.name, connID, txID, func(ctx context.Context) Verdict { return call(ctx, r.rule) })
		switch v.Kind {
		case KindNext:
			continue
		case KindInfo:
			if v.Reply.Code >= 200 && v.Reply.Code < 400 {
				res.Reply = v.Reply
			}
			continue
		case KindDeny:
			res.Verdict, res.Rule, res.Reply = v, r.name, v.Reply
			return res
		default: // Accept, ForceAccept, Quarantine
			res.Verdict, res.Rule = v, r.name
			if v.Kind == KindAccept && v.Reply.Code >= 200 && v.Reply.Code < 400 {
				res.Reply = v.Reply
			}
			return res
		}
	}
	return res
}

// invoke runs one rule with a deadline, turning a panic into Fail, and
// traces the decision.
func (c *Chain) invoke(ctx context.Context, s Stage, name, connID, txID string, fn func(context.Context) Verdict) (v Verdict) {
	start := time.Now()
	// A timer per rule was most of a rule's cost: skip the deadline when
	// the caller's (the session's) comes first, and start no timer unless
	// the rule waits on its context (lazyctx).
	rctx := ctx
	timeout := c.RuleTimeout
	if timeout <= 0 {
		timeout = defaultRuleTimeout
	}
	if dl, ok := ctx.Deadline(); !ok || dl.Sub(start) > timeout {
		var cancel context.CancelFunc
		rctx, cancel = lazyctx.WithDeadline(ctx, start.Add(timeout))
		defer cancel()
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				v = Fail(fmt.Errorf("policy: rule %q panicked: %v\n%s", name, p, debug.Stack()))
			}
		}()
		v = fn(rctx)
	}()
	d := time.Since(start)
	// Verdicts built by hand rather than with Deny, Quarantine, ... may be
	// malformed: fail closed, never let one read as acceptance.
	switch {
	case v.Kind == KindDeny && (v.Reply.Code < 400 || v.Reply.Code > 599):
		err := fmt.Errorf("policy: rule %q denied with reply %q, not a 4xx or 5xx", name, v.Reply)
		if v.Err != nil {
			err = fmt.Errorf("%w (rule error: %w)", err, v.Err)
		}
		v = Fail(err)
	case v.Kind == KindQuarantine && v.Queue == "":
		v = Fail(fmt.Errorf("policy: rule %q quarantined without a queue name", name))
	case v.Kind > KindInfo:
		v = Fail(fmt.Errorf("policy: rule %q returned unknown verdict kind %d", name, v.Kind))
	}
	// The attributes are built only when a record is written: a chain of
	// many rules must not pay for debug logging that is off.
	if v.Err != nil {
		c.logger().LogAttrs(ctx, slog.LevelError, "rule failed", append(decisionAttrs(s, name, v, d, connID, txID), slog.String("error", v.Err.Error()))...)
	} else if l := c.logger(); l.Enabled(ctx, slog.LevelDebug) {
		l.LogAttrs(ctx, slog.LevelDebug, "rule", decisionAttrs(s, name, v, d, connID, txID)...)
	}
	if c.Observer != nil {
		c.Observer(Decision{Stage: s, Rule: name, Verdict: v, Duration: d, ConnID: connID, TxID: txID})
	}
	return v
}

func decisionAttrs(s Stage, name string, v Verdict, d time.Duration, connID, txID string) []slog.Attr {
	attrs := make([]slog.Attr, 0, 7)
	attrs = append(attrs,
		slog.String("stage", s.String()), slog.String("rule", name),
		slog.String("verdict", v.String()), slog.Duration("took", d),
		slog.String("conn", connID),
	)
	if txID != "" {
		attrs = append(attrs, slog.String("id", txID))
	}
	return attrs
}

// applyConn records connection-wide effects of a pre-MAIL verdict. What
// the connect stage decided is also kept apart, as it survives STARTTLS
// (see Conn.ResetTLS) while what helo and auth decided does not.
func applyConn(conn *Conn, s Stage, r Result) {
	switch r.Verdict.Kind {
	case KindForceAccept:
		conn.state.forceAccepted = true
	case KindQuarantine:
		conn.state.quarantine = r.Verdict.Queue
		conn.state.quarantinedBy = quarantinedBy{r.Rule, r.Verdict.Reply.Text}
	default:
		return
	}
	if s == StageConnect {
		conn.state.atConnect = conn.state.decided
	}
}

// applyTx records transaction-wide effects of a verdict.
func applyTx(tx *Transaction, r Result) {
	switch r.Verdict.Kind {
	case KindForceAccept:
		tx.forceAccepted = true
	case KindQuarantine:
		if tx.quarantine == "" {
			tx.quarantine = r.Verdict.Queue
			tx.quarantinedBy = quarantinedBy{r.Rule, r.Verdict.Reply.Text}
		}
	}
}

func connSkip(conn *Conn) Verdict {
	return skipVerdict(conn.state.forceAccepted, conn.state.quarantine)
}

func txSkip(tx *Transaction) Verdict { return skipVerdict(tx.forceAccepted, tx.quarantine) }

func skipVerdict(forceAccepted bool, quarantine string) Verdict {
	switch {
	case quarantine != "":
		return Quarantine(quarantine)
	case forceAccepted:
		return ForceAccept()
	}
	return Next()
}

// EvalConnect runs the connect rules. A deny means: send Reply as the
// greeting (the smtp package turns any deny into 554 5.7.1 unless the rule
// gave a 4xx/5xx code of its own) and close.
func (c *Chain) EvalConnect(ctx context.Context, conn *Conn) Result {
	r := run(ctx, c, StageConnect, c.connect, connSkip(conn), conn.ID, "", func(ctx context.Context, rule ConnectRule) Verdict { return rule(ctx, conn) })
	applyConn(conn, StageConnect, r)
	return r
}

// EvalHelo runs the helo rules with conn.Helo set to helo.
func (c *Chain) EvalHelo(ctx context.Context, conn *Conn, helo string) Result {
	conn.Helo = helo
	r := run(ctx, c, StageHelo, c.helo, connSkip(conn), conn.ID, "", func(ctx context.Context, rule HeloRule) Verdict { return rule(ctx, conn, helo) })
	applyConn(conn, StageHelo, r)
	return r
}

// EvalAuth runs the auth rules after the credentials were verified. On
// acceptance the caller sets conn.AuthUser.
func (c *Chain) EvalAuth(ctx context.Context, conn *Conn, a AuthInfo) Result {
	r := run(ctx, c, StageAuth, c.auth, connSkip(conn), conn.ID, "", func(ctx context.Context, rule AuthRule) Verdict { return rule(ctx, conn, a) })
	applyConn(conn, StageAuth, r)
	return r
}

// EvalMail runs the mail rules.
func (c *Chain) EvalMail(ctx context.Context, tx *Transaction) Result {
	r := run(ctx, c, StageMail, c.mail, txSkip(tx), connID(tx), tx.ID, func(ctx context.Context, rule MailRule) Verdict { return rule(ctx, tx) })
	applyTx(tx, r)
	return r
}

// EvalRcpt runs the rcpt rules for rcpt. When no rule decides, the
// recipient gets the rcpt default (deny unless configured otherwise). On
// acceptance the caller appends rcpt to tx.Rcpts.
func (c *Chain) EvalRcpt(ctx context.Context, tx *Transaction, rcpt Recipient) Result {
	skip := txSkip(tx)
	if skip.Kind == KindQuarantine {
		// Quarantine is about the message, not about who may receive it:
		// the rcpt rules still decide each recipient, so that releasing
		// the message later never relays to a recipient no rule accepted.
		skip = Next()
	}
	r := run(ctx, c, StageRcpt, c.rcpt, skip, connID(tx), tx.ID, func(ctx context.Context, rule RcptRule) Verdict { return rule(ctx, tx, rcpt) })
	if skip.Kind == KindNext && r.Rule == "" && r.Verdict.Kind == KindNext {
		r.Verdict, r.Rule = c.RcptDefault, "(default)"
		if r.Verdict.Kind == KindNext {
			r.Verdict = defaultRcptDeny
		}
		if r.Verdict.Kind == KindDeny {
			r.Reply = r.Verdict.Reply
		}
	}
	applyTx(tx, r)
	return r
}

// EvalPreQ runs the preq rules on m.
func (c *Chain) EvalPreQ(ctx context.Context, tx *Transaction, m *Message) Result {
	r := run(ctx, c, StagePreQ, c.preq, txSkip(tx), connID(tx), tx.ID, func(ctx context.Context, rule MessageRule) Verdict { return rule(ctx, tx, m) })
	applyTx(tx, r)
	return r
}

// EvalPostQ runs the postq rules on m. A deny means the message bounces; a
// quarantine moves it to quarantine; 4xx (and Fail) defers it.
func (c *Chain) EvalPostQ(ctx context.Context, tx *Transaction, m *Message) Result {
	r := run(ctx, c, StagePostQ, c.postq, txSkip(tx), connID(tx), tx.ID, func(ctx context.Context, rule MessageRule) Verdict { return rule(ctx, tx, m) })
	applyTx(tx, r)
	return r
}

// EvalDelivery runs the delivery rules for one recipient; they fill route.
// Delivery rules run even for force-accepted transactions (they route, they
// do not filter) but not for quarantined ones.
func (c *Chain) EvalDelivery(ctx context.Context, tx *Transaction, rcpt Recipient, route *Route) Result {
	var skip Verdict
	if tx.quarantine != "" {
		skip = Quarantine(tx.quarantine)
	}
	return run(ctx, c, StageDelivery, c.delivery, skip, connID(tx), tx.ID, func(ctx context.Context, rule DeliveryRule) Verdict {
		return rule(ctx, tx, rcpt, route)
	})
}

func connID(tx *Transaction) string {
	if tx.Conn == nil {
		return ""
	}
	return tx.Conn.ID
}
