package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// env is one session's state for calling the chain stage by stage.
type env struct {
	conn  *policy.Conn
	tx    *policy.Transaction
	msg   *policy.Message
	rcpt  policy.Recipient
	route policy.Route
}

func newEnv(t testing.TB) *env {
	conn := &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("192.0.2.10:4321"), Listener: "mta"}
	tx := policy.NewTransaction(conn, "t1")
	tx.From = policy.MustParseAddress("sender@example.org")
	raw := "From: sender@example.org\r\nSubject: test\r\n\r\nbody\r\n"
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	require.NoError(t, err)
	return &env{conn: conn, tx: tx, msg: m, rcpt: policy.Recipient{Addr: policy.MustParseAddress("rcpt@example.com")}}
}

// eval runs stage s of c against e.
func eval(ctx context.Context, c *policy.Chain, s policy.Stage, e *env) policy.Result {
	switch s {
	case policy.StageConnect:
		return c.EvalConnect(ctx, e.conn)
	case policy.StageHelo:
		return c.EvalHelo(ctx, e.conn, "client.example.org")
	case policy.StageAuth:
		return c.EvalAuth(ctx, e.conn, policy.AuthInfo{Mechanism: "PLAIN", Identity: "alice"})
	case policy.StageMail:
		return c.EvalMail(ctx, e.tx)
	case policy.StageRcpt:
		return c.EvalRcpt(ctx, e.tx, e.rcpt)
	case policy.StagePreQ:
		return c.EvalPreQ(ctx, e.tx, e.msg)
	case policy.StagePostQ:
		return c.EvalPostQ(ctx, e.tx, e.msg)
	case policy.StageDelivery:
		return c.EvalDelivery(ctx, e.tx, e.rcpt, &e.route)
	}
	panic("unknown stage")
}

// addRule registers at stage s a rule of the stage's type that calls fn.
func addRule(c *policy.Chain, s policy.Stage, name string, fn func(ctx context.Context) policy.Verdict) {
	switch s {
	case policy.StageConnect:
		c.Connect(name, func(ctx context.Context, _ *policy.Conn) policy.Verdict { return fn(ctx) })
	case policy.StageHelo:
		c.Helo(name, func(ctx context.Context, _ *policy.Conn, _ string) policy.Verdict { return fn(ctx) })
	case policy.StageAuth:
		c.Auth(name, func(ctx context.Context, _ *policy.Conn, _ policy.AuthInfo) policy.Verdict { return fn(ctx) })
	case policy.StageMail:
		c.Mail(name, func(ctx context.Context, _ *policy.Transaction) policy.Verdict { return fn(ctx) })
	case policy.StageRcpt:
		c.Rcpt(name, func(ctx context.Context, _ *policy.Transaction, _ policy.Recipient) policy.Verdict { return fn(ctx) })
	case policy.StagePreQ:
		c.PreQ(name, func(ctx context.Context, _ *policy.Transaction, _ *policy.Message) policy.Verdict { return fn(ctx) })
	case policy.StagePostQ:
		c.PostQ(name, func(ctx context.Context, _ *policy.Transaction, _ *policy.Message) policy.Verdict { return fn(ctx) })
	case policy.StageDelivery:
		c.Delivery(name, func(ctx context.Context, _ *policy.Transaction, _ policy.Recipient, _ *policy.Route) policy.Verdict {
			return fn(ctx)
		})
	}
}

// logCapture collects the JSON records a chain logs.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCapture) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *logCapture) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		out = append(out, m)
	}
	return out
}

var (
	replyInfo    = policy.Reply{Code: 250, Enhanced: "2.1.0", Text: "Sender OK, SPF pass"}
	replyDeny    = policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "No"}
	replyRcptDef = policy.Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}
)

// TestChainVerdicts runs every verdict at every stage.
func TestChainVerdicts(t *testing.T) {
	custom := policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "Custom"}
	tests := []struct {
		name     string
		verdicts []policy.Verdict // one rule per verdict, named r0, r1, ...
		wantKind policy.Kind
		wantRule string
		// wantReply: the zero Reply means the stage's default reply.
		wantReply policy.Reply
		wantRan   int  // how many rules ran
		rcptDeny  bool // at rcpt the default deny applies instead
		failLog   string
	}{
		{name: "no rules", wantKind: policy.KindNext, rcptDeny: true},
		{name: "all next", verdicts: []policy.Verdict{policy.Next(), policy.Next()}, wantKind: policy.KindNext, wantRan: 2, rcptDeny: true},
		{name: "accept skips the rest", verdicts: []policy.Verdict{policy.Accept(), policy.Next(), policy.Deny(550, "5.7.1", "No")},
			wantKind: policy.KindAccept, wantRule: "r0", wantRan: 1},
		{name: "next then accept", verdicts: []policy.Verdict{policy.Next(), policy.Accept(), policy.Next()},
			wantKind: policy.KindAccept, wantRule: "r1", wantRan: 2},
		{name: "accept with reply", verdicts: []policy.Verdict{{Kind: policy.KindAccept, Reply: custom}},
			wantKind: policy.KindAccept, wantRule: "r0", wantReply: custom, wantRan: 1},
		{name: "accept with error reply keeps default", verdicts: []policy.Verdict{{Kind: policy.KindAccept, Reply: replyDeny}},
			wantKind: policy.KindAccept, wantRule: "r0", wantRan: 1},
		{name: "force accept", verdicts: []policy.Verdict{policy.ForceAccept(), policy.Deny(550, "5.7.1", "No")},
			wantKind: policy.KindForceAccept, wantRule: "r0", wantRan: 1},
		{name: "deny", verdicts: []policy.Verdict{policy.Next(), policy.Deny(550, "5.7.1", "No"), policy.Accept()},
			wantKind: policy.KindDeny, wantRule: "r1", wantReply: replyDeny, wantRan: 2},
		{name: "defer", verdicts: []policy.Verdict{policy.Defer("4.7.1", "Later")},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "Later"}, wantRan: 1},
		{name: "info then next", verdicts: []policy.Verdict{policy.Info(250, "2.1.0", "Sender OK, SPF pass"), policy.Next()},
			wantKind: policy.KindNext, wantReply: replyInfo, wantRan: 2, rcptDeny: true},
		{name: "info then accept", verdicts: []policy.Verdict{policy.Info(250, "2.1.0", "Sender OK, SPF pass"), policy.Accept()},
			wantKind: policy.KindAccept, wantRule: "r1", wantReply: replyInfo, wantRan: 2},
		{name: "info then deny", verdicts: []policy.Verdict{policy.Info(250, "2.1.0", "Sender OK, SPF pass"), policy.Deny(550, "5.7.1", "No")},
			wantKind: policy.KindDeny, wantRule: "r1", wantReply: replyDeny, wantRan: 2},
		{name: "info with error code is ignored", verdicts: []policy.Verdict{policy.Info(550, "5.0.0", "x"), policy.Accept()},
			wantKind: policy.KindAccept, wantRule: "r1", wantRan: 2},
		{name: "quarantine", verdicts: []policy.Verdict{policy.Quarantine("spam"), policy.Deny(550, "5.7.1", "No")},
			wantKind: policy.KindQuarantine, wantRule: "r0", wantRan: 1},
		{name: "fail", verdicts: []policy.Verdict{policy.Fail(errors.New("db down")), policy.Accept()},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "db down"},
		{name: "panic", verdicts: []policy.Verdict{policy.Next(), policy.Accept(), policy.Accept()}, // r1 panics
			wantKind: policy.KindDeny, wantRule: "r1", wantReply: policy.Fail(nil).Reply, wantRan: 2, failLog: "panicked: boom"},
		{name: "deny with 2xx code", verdicts: []policy.Verdict{policy.Deny(250, "2.0.0", "oops"), policy.Accept()},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "non-error code 250"},
		{name: "hand-made deny without reply", verdicts: []policy.Verdict{{Kind: policy.KindDeny}},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "not a 4xx or 5xx"},
		{name: "hand-made deny with 2xx reply", verdicts: []policy.Verdict{{Kind: policy.KindDeny, Reply: custom, Err: errors.New("cause")}},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "cause"},
		{name: "quarantine without a queue", verdicts: []policy.Verdict{policy.Quarantine("")},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "without a queue name"},
		{name: "unknown kind", verdicts: []policy.Verdict{{Kind: policy.Kind(42)}},
			wantKind: policy.KindDeny, wantRule: "r0", wantReply: policy.Fail(nil).Reply, wantRan: 1, failLog: "unknown verdict kind"},
	}
	for _, s := range policy.Stages() {
		for _, tt := range tests {
			t.Run(s.String()+"/"+tt.name, func(t *testing.T) {
				var logs logCapture
				c := &policy.Chain{Logger: logs.logger()}
				ran := 0
				for i, v := range tt.verdicts {
					panics := tt.name == "panic" && i == 1
					addRule(c, s, fmt.Sprintf("r%d", i), func(context.Context) policy.Verdict {
						ran++
						if panics {
							panic("boom")
						}
						return v
					})
				}
				e := newEnv(t)
				r := eval(context.Background(), c, s, e)
				assert.Equal(t, tt.wantRan, ran, "rules run")

				wantKind, wantRule, wantReply := tt.wantKind, tt.wantRule, tt.wantReply
				if wantReply.IsZero() {
					wantReply = policy.DefaultReply(s)
				}
				if s == policy.StageRcpt && tt.rcptDeny {
					wantKind, wantRule, wantReply = policy.KindDeny, "(default)", replyRcptDef
				}
				assert.Equal(t, wantKind, r.Verdict.Kind, "verdict %s", r.Verdict)
				assert.Equal(t, wantRule, r.Rule)
				assert.Equal(t, wantReply, r.Reply)
				assert.Equal(t, wantKind != policy.KindDeny, r.Accepted())
				if r.Verdict.Kind == policy.KindDeny {
					assert.True(t, r.Reply.Code >= 400 && r.Reply.Code < 600, "a deny never reads as success: %s", r.Reply)
				}

				var failures []map[string]any
				for _, rec := range logs.records(t) {
					if rec["level"] == "ERROR" {
						failures = append(failures, rec)
					}
				}
				if tt.failLog == "" {
					assert.Empty(t, failures)
					return
				}
				require.Len(t, failures, 1)
				assert.Equal(t, "rule failed", failures[0]["msg"])
				assert.Equal(t, s.String(), failures[0]["stage"])
				assert.Equal(t, wantRule, failures[0]["rule"])
				assert.Contains(t, failures[0]["error"], tt.failLog)
				if tt.name == "panic" {
					assert.Contains(t, failures[0]["error"], "goroutine", "the stack is logged")
				}
			})
		}
	}
}

func TestRcptDefault(t *testing.T) {
	tests := []struct {
		name     string
		def      policy.Verdict
		rules    []policy.Verdict
		wantKind policy.Kind
		wantRule string
		reply    policy.Reply
	}{
		{name: "no rules denies", wantKind: policy.KindDeny, wantRule: "(default)", reply: replyRcptDef},
		{name: "actions only deny", rules: []policy.Verdict{policy.Next(), policy.Next()}, wantKind: policy.KindDeny, wantRule: "(default)", reply: replyRcptDef},
		{name: "info does not admit", rules: []policy.Verdict{policy.Info(250, "2.1.5", "fine")}, wantKind: policy.KindDeny, wantRule: "(default)", reply: replyRcptDef},
		{name: "accept admits", rules: []policy.Verdict{policy.Next(), policy.Accept()}, wantKind: policy.KindAccept, wantRule: "r1", reply: policy.DefaultReply(policy.StageRcpt)},
		{name: "RcptDefault accept", def: policy.Accept(),
			rules: []policy.Verdict{policy.Next()}, wantKind: policy.KindAccept, wantRule: "(default)", reply: policy.DefaultReply(policy.StageRcpt)},
		{name: "RcptDefault accept keeps info reply", def: policy.Accept(),
			rules: []policy.Verdict{policy.Info(250, "2.1.5", "fine")}, wantKind: policy.KindAccept, wantRule: "(default)", reply: policy.Reply{Code: 250, Enhanced: "2.1.5", Text: "fine"}},
		{name: "RcptDefault temporary", def: policy.Defer("4.7.1", "Greylisted"),
			wantKind: policy.KindDeny, wantRule: "(default)", reply: policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "Greylisted"}},
		{name: "RcptDefault does not override a rule", def: policy.Accept(),
			rules: []policy.Verdict{policy.Deny(550, "5.1.1", "Unknown user")}, wantKind: policy.KindDeny, wantRule: "r0", reply: policy.Reply{Code: 550, Enhanced: "5.1.1", Text: "Unknown user"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &policy.Chain{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), RcptDefault: tt.def}
			for i, v := range tt.rules {
				addRule(c, policy.StageRcpt, fmt.Sprintf("r%d", i), func(context.Context) policy.Verdict { return v })
			}
			e := newEnv(t)
			r := c.EvalRcpt(context.Background(), e.tx, e.rcpt)
			assert.Equal(t, tt.wantKind, r.Verdict.Kind)
			assert.Equal(t, tt.wantRule, r.Rule)
			assert.Equal(t, tt.reply, r.Reply)
		})
	}
}

// stageRun is one transaction through every stage, each stage having one
// rule named after it that returns the verdict given for the stage (Next by
// default, Accept at rcpt so that the recipient is admitted).
type stageRun struct {
	ran     map[policy.Stage]int
	results map[policy.Stage]policy.Result
	conn    *policy.Conn
	tx      *policy.Transaction
}

func runStages(t *testing.T, verdicts map[policy.Stage]policy.Verdict, rcpts int) *stageRun {
	t.Helper()
	c := &policy.Chain{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	sr := &stageRun{ran: map[policy.Stage]int{}, results: map[policy.Stage]policy.Result{}}
	for _, s := range policy.Stages() {
		v, ok := verdicts[s]
		if !ok && s == policy.StageRcpt {
			v = policy.Accept()
		}
		addRule(c, s, s.String(), func(context.Context) policy.Verdict { sr.ran[s]++; return v })
	}
	ctx := context.Background()
	e := newEnv(t)
	sr.conn = e.conn
	for _, s := range []policy.Stage{policy.StageConnect, policy.StageHelo, policy.StageAuth} {
		sr.results[s] = eval(ctx, c, s, e)
	}
	e.tx = policy.NewTransaction(e.conn, "t1")
	sr.tx = e.tx
	for _, s := range []policy.Stage{policy.StageMail, policy.StageRcpt} {
		sr.results[s] = eval(ctx, c, s, e)
	}
	for i := 1; i < rcpts; i++ {
		sr.results[policy.StageRcpt] = eval(ctx, c, policy.StageRcpt, e)
	}
	for _, s := range []policy.Stage{policy.StagePreQ, policy.StagePostQ, policy.StageDelivery} {
		sr.results[s] = eval(ctx, c, s, e)
	}
	return sr
}

// TestVerdictsAcrossStages checks what ForceAccept, Quarantine and Accept
// given at one stage do to the later ones.
func TestVerdictsAcrossStages(t *testing.T) {
	all := policy.Stages()
	after := func(s policy.Stage) []policy.Stage { return all[int(s):] }
	filtering := func(ss []policy.Stage) []policy.Stage {
		var out []policy.Stage
		for _, s := range ss {
			if s != policy.StageDelivery {
				out = append(out, s)
			}
		}
		return out
	}
	for _, s := range all {
		t.Run("force accept at "+s.String(), func(t *testing.T) {
			sr := runStages(t, map[policy.Stage]policy.Verdict{s: policy.ForceAccept()}, 2)
			assert.Equal(t, 1, sr.ran[s])
			assert.Equal(t, policy.KindForceAccept, sr.results[s].Verdict.Kind)
			for _, later := range filtering(after(s)) {
				assert.Zero(t, sr.ran[later], "%s rules skipped", later)
				assert.Equal(t, policy.KindForceAccept, sr.results[later].Verdict.Kind, later.String())
				assert.Equal(t, "(skipped)", sr.results[later].Rule, later.String())
				assert.Equal(t, policy.DefaultReply(later), sr.results[later].Reply, later.String())
			}
			if s != policy.StageDelivery {
				assert.Equal(t, 1, sr.ran[policy.StageDelivery], "delivery rules still run")
				assert.Equal(t, policy.KindNext, sr.results[policy.StageDelivery].Verdict.Kind)
			}
			if s >= policy.StageMail && s < policy.StageDelivery || s <= policy.StageAuth {
				assert.True(t, sr.tx.ForceAccepted())
			}
			assert.Empty(t, sr.tx.Quarantine())
		})
		if s == policy.StageDelivery {
			continue // quarantine at delivery is covered by TestChainVerdicts
		}
		t.Run("quarantine at "+s.String(), func(t *testing.T) {
			sr := runStages(t, map[policy.Stage]policy.Verdict{s: policy.Quarantine("spam")}, 2)
			if s != policy.StageRcpt {
				assert.Equal(t, 1, sr.ran[s])
			}
			// The rcpt rules still decide every recipient of a
			// quarantined transaction: a release must never relay to
			// one no rule accepted.
			if s < policy.StageRcpt {
				assert.Equal(t, 2, sr.ran[policy.StageRcpt], "rcpt rules run for each recipient")
				assert.Equal(t, policy.KindAccept, sr.results[policy.StageRcpt].Verdict.Kind)
			}
			if s == policy.StageRcpt {
				assert.Equal(t, 2, sr.ran[policy.StageRcpt], "the second recipient is decided by the rules too")
			}
			for _, later := range after(s) {
				if later == policy.StageRcpt {
					continue
				}
				assert.Zero(t, sr.ran[later], "%s rules skipped", later)
				assert.Equal(t, policy.Quarantine("spam"), sr.results[later].Verdict, later.String())
				assert.True(t, sr.results[later].Accepted())
			}
			assert.Equal(t, "spam", sr.tx.Quarantine())
			assert.False(t, sr.tx.ForceAccepted())
		})
		t.Run("accept at "+s.String()+" skips nothing later", func(t *testing.T) {
			sr := runStages(t, map[policy.Stage]policy.Verdict{s: policy.Accept()}, 2)
			for _, st := range all {
				want := 1
				if st == policy.StageRcpt {
					want = 2
				}
				assert.Equal(t, want, sr.ran[st], st.String())
			}
			assert.False(t, sr.tx.ForceAccepted())
		})
	}
}

// A connection-wide force-accept or quarantine holds for every transaction
// of the connection; one decided at mail holds for its transaction only.
func TestConnectionAndTransactionScope(t *testing.T) {
	c := policy.NewChain()
	var mailRuns int
	c.Connect("trusted", func(_ context.Context, conn *policy.Conn) policy.Verdict {
		if conn.Remote.Addr().IsLoopback() {
			return policy.ForceAccept()
		}
		return policy.Next()
	})
	c.Mail("first-tx-only", func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		mailRuns++
		if tx.ID == "t1" {
			return policy.ForceAccept()
		}
		return policy.Next()
	})
	c.Rcpt("deny-all", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict {
		return policy.Deny(550, "5.7.1", "No")
	})
	ctx := context.Background()
	rcpt := policy.Recipient{Addr: policy.MustParseAddress("x@example.net")}

	local := &policy.Conn{ID: "local", Remote: netip.MustParseAddrPort("127.0.0.1:1")}
	require.Equal(t, policy.KindForceAccept, c.EvalConnect(ctx, local).Verdict.Kind)
	for _, id := range []string{"a", "b"} {
		tx := policy.NewTransaction(local, id)
		assert.True(t, tx.ForceAccepted())
		assert.True(t, c.EvalRcpt(ctx, tx, rcpt).Accepted(), "every transaction of a trusted connection")
	}
	assert.Zero(t, mailRuns)

	remote := &policy.Conn{ID: "remote", Remote: netip.MustParseAddrPort("192.0.2.1:1")}
	require.Equal(t, policy.KindNext, c.EvalConnect(ctx, remote).Verdict.Kind)
	tx1 := policy.NewTransaction(remote, "t1")
	assert.Equal(t, policy.KindForceAccept, c.EvalMail(ctx, tx1).Verdict.Kind)
	assert.True(t, c.EvalRcpt(ctx, tx1, rcpt).Accepted())
	tx2 := policy.NewTransaction(remote, "t2")
	assert.False(t, tx2.ForceAccepted(), "a force-accept at mail does not leak to the next transaction")
	c.EvalMail(ctx, tx2)
	assert.False(t, c.EvalRcpt(ctx, tx2, rcpt).Accepted())
	assert.Equal(t, 2, mailRuns)
}

// ForceAccept at rcpt skips the rules of the transaction's later
// recipients too: a rule must not force-accept a recipient unless every
// later one may be accepted (vSMTP's faccept semantics).
func TestForceAcceptAtRcptAdmitsLaterRecipients(t *testing.T) {
	c := policy.NewChain()
	c.Rcpt("postmaster", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		if strings.EqualFold(r.Addr.Local, "postmaster") {
			return policy.ForceAccept()
		}
		return policy.Next()
	})
	ctx := context.Background()
	tx := policy.NewTransaction(&policy.Conn{ID: "c"}, "t")
	assert.Equal(t, policy.KindDeny, c.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("a@example.net")}).Verdict.Kind)
	assert.Equal(t, policy.KindForceAccept, c.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("postmaster@example.com")}).Verdict.Kind)
	r := c.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("b@example.net")})
	assert.Equal(t, "(skipped)", r.Rule)
	assert.True(t, r.Accepted())
}

func TestEvalHeloSetsHelo(t *testing.T) {
	c := policy.NewChain()
	var seen string
	c.Helo("h", func(_ context.Context, conn *policy.Conn, helo string) policy.Verdict {
		seen = conn.Helo + "|" + helo
		return policy.Next()
	})
	conn := &policy.Conn{}
	c.EvalHelo(context.Background(), conn, "mx.example.org")
	assert.Equal(t, "mx.example.org|mx.example.org", seen)
	assert.Equal(t, "mx.example.org", conn.Helo)
}

func TestRulesSeeTheirStage(t *testing.T) {
	c := policy.NewChain()
	var got []string
	c.Auth("a", func(_ context.Context, _ *policy.Conn, a policy.AuthInfo) policy.Verdict {
		got = append(got, a.Mechanism+":"+a.Identity)
		return policy.Next()
	})
	c.Rcpt("r", func(_ context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
		got = append(got, fmt.Sprintf("%s->%s (%d before)", tx.From, r.Addr, len(tx.Rcpts)))
		return policy.Accept()
	})
	c.PreQ("p", func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
		got = append(got, m.Header.Get("Subject"))
		m.Header.Add("X-Seen", "preq")
		return policy.Next()
	})
	c.Delivery("d", func(_ context.Context, _ *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
		route.Transport, route.Target = "maildir", r.Addr.Local
		return policy.Next()
	})
	ctx := context.Background()
	e := newEnv(t)
	c.EvalAuth(ctx, e.conn, policy.AuthInfo{Mechanism: "PLAIN", Identity: "alice"})
	c.EvalRcpt(ctx, e.tx, e.rcpt)
	c.EvalPreQ(ctx, e.tx, e.msg)
	r := c.EvalDelivery(ctx, e.tx, e.rcpt, &e.route)
	assert.Equal(t, []string{"PLAIN:alice", "sender@example.org->rcpt@example.com (0 before)", "test"}, got)
	assert.Equal(t, "preq", e.msg.Header.Get("X-Seen"))
	assert.Equal(t, policy.Route{Transport: "maildir", Target: "rcpt"}, e.route)
	assert.Equal(t, policy.KindNext, r.Verdict.Kind)
}

func TestActionsNeverDecide(t *testing.T) {
	var calls []string
	c := policy.NewChain()
	c.Connect("c", policy.ConnectAction(func(context.Context, *policy.Conn) { calls = append(calls, "connect") }))
	c.Mail("m", policy.MailAction(func(_ context.Context, tx *policy.Transaction) {
		tx.Header.Add("Received-SPF", "pass")
		calls = append(calls, "mail")
	}))
	c.Rcpt("r", policy.RcptAction(func(context.Context, *policy.Transaction, policy.Recipient) { calls = append(calls, "rcpt") }))
	c.PreQ("p", policy.MessageAction(func(_ context.Context, _ *policy.Transaction, m *policy.Message) {
		m.Header.Add("X-Action", "1")
		calls = append(calls, "preq")
	}))
	ctx := context.Background()
	e := newEnv(t)
	assert.Equal(t, policy.KindNext, c.EvalConnect(ctx, e.conn).Verdict.Kind)
	assert.Equal(t, policy.KindNext, c.EvalMail(ctx, e.tx).Verdict.Kind)
	assert.False(t, c.EvalRcpt(ctx, e.tx, e.rcpt).Accepted(), "an action cannot admit a recipient")
	assert.Equal(t, policy.KindNext, c.EvalPreQ(ctx, e.tx, e.msg).Verdict.Kind)
	assert.Equal(t, []string{"connect", "mail", "rcpt", "preq"}, calls)
	assert.Equal(t, "pass", e.tx.Header.Get("Received-SPF"))
	assert.Equal(t, "1", e.msg.Header.Get("X-Action"))
}

func TestRuleNames(t *testing.T) {
	noop := func(context.Context, *policy.Transaction) policy.Verdict { return policy.Next() }
	tests := []struct {
		name string
		reg  func(c *policy.Chain)
	}{
		{"same stage", func(c *policy.Chain) { c.Mail("x", noop).Mail("x", noop) }},
		{"across stages", func(c *policy.Chain) {
			c.Mail("x", noop)
			c.Connect("x", func(context.Context, *policy.Conn) policy.Verdict { return policy.Next() })
		}},
		{"empty name", func(c *policy.Chain) { c.Mail("", noop) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Panics(t, func() { tt.reg(policy.NewChain()) })
		})
	}
	c := policy.NewChain()
	for _, s := range policy.Stages() {
		assert.Empty(t, c.Rules(s))
		for _, n := range []string{"a", "b"} {
			addRule(c, s, s.String()+"-"+n, func(context.Context) policy.Verdict { return policy.Next() })
		}
	}
	for _, s := range policy.Stages() {
		assert.Equal(t, []string{s.String() + "-a", s.String() + "-b"}, c.Rules(s))
	}
	assert.Nil(t, c.Rules(policy.Stage(0)))
}

func TestRuleTimeout(t *testing.T) {
	var decisions []policy.Decision
	c := &policy.Chain{RuleTimeout: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Observer: func(d policy.Decision) { decisions = append(decisions, d) }}
	c.Mail("slow-dns", func(ctx context.Context, _ *policy.Transaction) policy.Verdict {
		select {
		case <-ctx.Done():
			return policy.Fail(ctx.Err())
		case <-time.After(10 * time.Second):
			return policy.Accept()
		}
	})
	c.Mail("after", func(ctx context.Context, _ *policy.Transaction) policy.Verdict {
		if ctx.Err() != nil {
			return policy.Fail(ctx.Err())
		}
		return policy.Next()
	})
	e := newEnv(t)
	r := c.EvalMail(context.Background(), e.tx)
	assert.Equal(t, policy.Fail(nil).Reply, r.Reply)
	assert.Equal(t, "slow-dns", r.Rule)
	require.Len(t, decisions, 1)
	assert.ErrorIs(t, decisions[0].Verdict.Err, context.DeadlineExceeded)
	assert.GreaterOrEqual(t, decisions[0].Duration, 20*time.Millisecond)

	// Each rule gets its own deadline; the session's context bounds them all.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r = c.EvalMail(ctx, e.tx)
	assert.ErrorIs(t, r.Verdict.Err, context.Canceled)
}

// TestRuleTimeoutPolled: a rule that never waits on Done but checks Err
// (its deadline's timer never starts, see lazyctx) still runs out of time.
func TestRuleTimeoutPolled(t *testing.T) {
	c := &policy.Chain{RuleTimeout: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.Mail("busy", func(ctx context.Context, _ *policy.Transaction) policy.Verdict {
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if err := ctx.Err(); err != nil {
				return policy.Fail(err)
			}
		}
		return policy.Accept()
	})
	r := c.EvalMail(context.Background(), newEnv(t).tx)
	assert.Equal(t, "busy", r.Rule)
	assert.ErrorIs(t, r.Verdict.Err, context.DeadlineExceeded)
}

func TestObserverAndLog(t *testing.T) {
	var (
		mu        sync.Mutex
		decisions []policy.Decision
		logs      logCapture
	)
	c := &policy.Chain{Logger: logs.logger(), Observer: func(d policy.Decision) { mu.Lock(); decisions = append(decisions, d); mu.Unlock() }}
	c.Connect("slow", func(context.Context, *policy.Conn) policy.Verdict {
		time.Sleep(5 * time.Millisecond)
		return policy.Next()
	})
	c.Mail("spf", func(context.Context, *policy.Transaction) policy.Verdict {
		return policy.Info(250, "2.1.0", "SPF pass")
	})
	c.Rcpt("relay", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	c.Rcpt("never", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Next() })
	c.PreQ("av", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
		return policy.Quarantine("virus")
	})
	c.PostQ("skipped", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict { return policy.Next() })

	ctx := context.Background()
	e := newEnv(t)
	for _, s := range policy.Stages() {
		eval(ctx, c, s, e)
	}
	want := []struct {
		stage   policy.Stage
		rule    string
		verdict string
		tx      string
	}{
		{policy.StageConnect, "slow", "next", ""},
		{policy.StageMail, "spf", "info(250 2.1.0 SPF pass)", "t1"},
		{policy.StageRcpt, "relay", "accept", "t1"},
		{policy.StagePreQ, "av", "quarantine(virus)", "t1"},
	}
	require.Len(t, decisions, len(want), "one decision per rule run; skipped stages have none")
	recs := logs.records(t)
	require.Len(t, recs, len(want))
	for i, w := range want {
		d := decisions[i]
		assert.Equal(t, w.stage, d.Stage)
		assert.Equal(t, w.rule, d.Rule)
		assert.Equal(t, w.verdict, d.Verdict.String())
		assert.Equal(t, "c1", d.ConnID)
		assert.Equal(t, w.tx, d.TxID)
		assert.Positive(t, d.Duration)

		rec := recs[i]
		assert.Equal(t, "DEBUG", rec["level"])
		assert.Equal(t, "rule", rec["msg"])
		assert.Equal(t, w.stage.String(), rec["stage"])
		assert.Equal(t, w.rule, rec["rule"])
		assert.Equal(t, w.verdict, rec["verdict"])
		assert.Equal(t, "c1", rec["conn"])
		assert.Contains(t, rec, "took")
		if w.tx == "" {
			assert.NotContains(t, rec, "id")
		} else {
			assert.Equal(t, w.tx, rec["id"])
		}
	}
	assert.GreaterOrEqual(t, decisions[0].Duration, 5*time.Millisecond)
}

// With the logger at info level, decisions are not logged, failures are.
func TestLogLevels(t *testing.T) {
	var buf bytes.Buffer
	c := &policy.Chain{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	c.Mail("ok", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Next() })
	c.Mail("bad", func(context.Context, *policy.Transaction) policy.Verdict {
		return policy.Fail(errors.New("ldap unreachable"))
	})
	c.EvalMail(context.Background(), newEnv(t).tx)
	out := buf.String()
	assert.Equal(t, 1, strings.Count(out, "\n"), out)
	assert.Contains(t, out, "level=ERROR")
	assert.Contains(t, out, "rule=bad")
	assert.Contains(t, out, "ldap unreachable")
}

// Evaluation is safe for concurrent use (run with -race).
func TestChainConcurrent(t *testing.T) {
	var mu sync.Mutex
	count := 0
	c := &policy.Chain{Observer: func(policy.Decision) { mu.Lock(); count++; mu.Unlock() }}
	c.Connect("c", func(context.Context, *policy.Conn) policy.Verdict { return policy.Next() })
	c.Mail("m", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Next() })
	c.Rcpt("r", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		if r.Addr.Domain == "example.com" {
			return policy.Accept()
		}
		return policy.Next()
	})
	const workers, per = 8, 200
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				e := newEnv(t)
				c.EvalConnect(context.Background(), e.conn)
				c.EvalMail(context.Background(), e.tx)
				assert.True(t, c.EvalRcpt(context.Background(), e.tx, e.rcpt).Accepted())
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, workers*per*3, count)
}

func TestVerdictAndReplyStrings(t *testing.T) {
	tests := []struct {
		v       policy.Verdict
		str     string
		decides bool
	}{
		{policy.Next(), "next", false},
		{policy.Accept(), "accept", true},
		{policy.ForceAccept(), "force_accept", true},
		{policy.Deny(550, "5.7.1", "No"), "deny(550 5.7.1 No)", true},
		{policy.Defer("4.7.1", "Later"), "deny(451 4.7.1 Later)", true},
		{policy.Fail(errors.New("x")), "deny(451 4.3.0 Internal error, try again later)", true},
		{policy.Quarantine("spam"), "quarantine(spam)", true},
		{policy.Info(250, "", "OK"), "info(250 OK)", false},
		{policy.Verdict{Kind: 42}, "kind(42)", true},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			assert.Equal(t, tt.str, tt.v.String())
			assert.Equal(t, tt.decides, tt.v.Decides())
		})
	}
	err := errors.New("cause")
	assert.Equal(t, err, policy.Deny(550, "5.7.1", "No").WithErr(err).Err)
	assert.Nil(t, policy.Deny(550, "5.7.1", "No").Err, "WithErr returns a copy")

	assert.True(t, policy.Reply{Code: 451}.Temporary())
	assert.False(t, policy.Reply{Code: 451}.Permanent())
	assert.True(t, policy.Reply{Code: 554}.Permanent())
	assert.False(t, policy.Reply{Code: 250}.Temporary() || policy.Reply{Code: 250}.Permanent())
	assert.True(t, policy.Reply{}.IsZero())
	assert.Equal(t, "220 ESMTP ready", policy.DefaultReply(policy.StageConnect).String())
	for _, s := range policy.Stages() {
		r := policy.DefaultReply(s)
		assert.True(t, r.Code >= 200 && r.Code < 300, "%s default reply %s", s, r)
	}
	assert.Equal(t, "connect,helo,auth,mail,rcpt,preq,postq,delivery", joinStages(policy.Stages()))
	assert.Equal(t, "stage(0)", policy.Stage(0).String())
	assert.Equal(t, "stage(9)", policy.Stage(9).String())
	for _, k := range []policy.Kind{policy.KindNext, policy.KindAccept, policy.KindForceAccept, policy.KindDeny, policy.KindQuarantine, policy.KindInfo} {
		assert.NotContains(t, k.String(), "kind(")
	}
}

func joinStages(ss []policy.Stage) string {
	var names []string
	for _, s := range ss {
		names = append(names, s.String())
	}
	return strings.Join(names, ",")
}

// The same rules through policytest, as a user would test them: one
// recipient among three refused, the others delivered.
func TestChainThroughPolicytest(t *testing.T) {
	rec := &policytest.Recorder{}
	c := &policy.Chain{Observer: rec.Observe}
	c.Rcpt("known-users", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		switch r.Addr.Local {
		case "alice", "bob":
			return policy.Accept()
		case "gone":
			return policy.Deny(550, "5.1.1", "No such user")
		}
		return policy.Next()
	})
	out, err := policytest.Run(context.Background(), c, policytest.Session{
		From:  "sender@example.org",
		Rcpts: []string{"alice@example.com", "gone@example.com", "bob@example.com"},
	})
	require.NoError(t, err)
	assert.Zero(t, out.Stopped)
	assert.Equal(t, 550, out.Rcpts[1].Reply.Code)
	require.Len(t, out.Delivery, 2)
	assert.Equal(t, "bob@example.com", out.Delivery[1].Rcpt.Addr.String())
	assert.Equal(t, []string{"known-users", "known-users", "known-users"}, rec.Rules())
}

// TestQuarantineIsNoRelay: a transaction quarantined at mail still has its
// recipients decided by the rcpt rules, so releasing the message later can
// never relay to a recipient no rule accepted.
func TestQuarantineIsNoRelay(t *testing.T) {
	c := &policy.Chain{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.Mail("suspicious", func(context.Context, *policy.Transaction) policy.Verdict { return policy.Quarantine("review") })
	c.Rcpt("local-only", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		if r.Addr.Domain == "example.com" {
			return policy.Accept()
		}
		return policy.Next()
	})
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "t1")
	ctx := context.Background()
	require.Equal(t, policy.KindQuarantine, c.EvalMail(ctx, tx).Verdict.Kind)
	local := c.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("bob@example.com")})
	assert.True(t, local.Accepted())
	foreign := c.EvalRcpt(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("victim@elsewhere.test")})
	assert.False(t, foreign.Accepted(), "a quarantined transaction is no open relay")
	assert.Equal(t, 554, foreign.Reply.Code)
	assert.Equal(t, "review", tx.Quarantine())
}

// TestQuarantinedBy: the transaction remembers the rule that chose its
// quarantine and the reason it gave, the first one only, and inherits
// the connection's.
func TestQuarantinedBy(t *testing.T) {
	c := &policy.Chain{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.Connect("listed", func(_ context.Context, conn *policy.Conn) policy.Verdict {
		if conn.ID == "suspect" {
			return policy.QuarantineBecause("review", "listed on a block list")
		}
		return policy.Next()
	})
	c.PreQ("antivirus", func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
		return policy.QuarantineBecause("virus_q", "Eicar-Test-Signature")
	})
	ctx := context.Background()

	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "t1")
	rule, reason := tx.QuarantinedBy()
	assert.Empty(t, rule+reason)
	res := c.EvalPreQ(ctx, tx, &policy.Message{Header: &policy.Header{}})
	require.Equal(t, policy.KindQuarantine, res.Verdict.Kind)
	assert.Equal(t, policy.DefaultReply(policy.StagePreQ), res.Reply, "the reason is no reply: the client gets the stage's 250")
	rule, reason = tx.QuarantinedBy()
	assert.Equal(t, "antivirus", rule)
	assert.Equal(t, "Eicar-Test-Signature", reason)
	assert.Equal(t, "virus_q", tx.Quarantine())

	conn := &policy.Conn{ID: "suspect"}
	c.EvalConnect(ctx, conn)
	tx = policy.NewTransaction(conn, "t2")
	rule, reason = tx.QuarantinedBy()
	assert.Equal(t, "listed", rule)
	assert.Equal(t, "listed on a block list", reason)
	c.EvalPreQ(ctx, tx, &policy.Message{Header: &policy.Header{}})
	assert.Equal(t, "review", tx.Quarantine(), "the first quarantine stays")
	rule, _ = tx.QuarantinedBy()
	assert.Equal(t, "listed", rule)
}
