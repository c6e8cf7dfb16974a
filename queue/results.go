package queue

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// The result lines: one INFO record per recipient and attempt, Postfix
// style, with the message "queue: result" and the keys
//
//	id       the queue ID (the key every line of the message carries)
//	from     the envelope sender, <> for the null sender
//	to       the recipient
//	relay    the transport (and ":target" when the route has one) that
//	         took the recipient, "none" when none was reached
//	delay    seconds since the message was received, to the millisecond
//	attempts delivery attempts made so far
//	dsn      the enhanced status code (derived from the reply code when
//	         the reply has none)
//	status   delivered, bounced, expired, quarantined, or deferred
//	reply    the last reply for the recipient
//
// Each recipient gets exactly one line with a final status (delivered,
// bounced, expired or quarantined) when its delivery ends; a deferred
// recipient gets a "deferred" line per attempt, as Postfix's
// status=deferred. A quarantined message adds "queue" (its quarantine).
const resultMsg = "queue: result"

// Statuses of a result line.
const (
	statusDelivered   = "delivered"
	statusBounced     = "bounced"
	statusExpired     = "expired"
	statusQuarantined = "quarantined"
	statusDeferred    = "deferred"
)

// attempt is what one run of the postq and delivery stages knows about a
// message's recipients, for the result lines: rcpts[i] is recipient i's.
type attempt struct {
	rcpts []attemptRcpt
	// stored is what the store has of the message while the attempt
	// runs: its attempt record, if one was saved.
	stored stored
}

type attemptRcpt struct {
	pending bool         // pending when the attempt began
	route   policy.Route // its route in this attempt, if any
	expired bool         // failed because the message expired
}

// newAttempt notes which recipients of env are pending; call it before
// the attempt changes their states.
func newAttempt(env *Envelope) *attempt {
	a := &attempt{rcpts: make([]attemptRcpt, len(env.Rcpts))}
	for i, r := range env.Rcpts {
		a.rcpts[i].pending = r.State == RcptPending
	}
	return a
}

// logResults writes the result line of every recipient that was pending
// when the attempt began: its final status, or deferred.
func (s *Scheduler) logResults(ctx context.Context, env *Envelope, a *attempt) {
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	now := s.cfg.Clock.Now()
	for i, ar := range a.rcpts {
		if !ar.pending {
			continue
		}
		r := &env.Rcpts[i]
		var status string
		switch {
		case r.State == RcptDelivered:
			status = statusDelivered
		case r.State == RcptFailed && ar.expired:
			status = statusExpired
		case r.State == RcptFailed:
			status = statusBounced
		default:
			status = statusDeferred
		}
		s.log.LogAttrs(ctx, slog.LevelInfo, resultMsg, resultAttrs(env, r, relayName(ar.route), now, status)...)
	}
}

// LogQuarantined writes to log the result lines (see Config.Logger: one
// INFO "queue: result" line per recipient, status=quarantined) of a
// message moved to quarantine queue q: every recipient still pending ends
// there. The scheduler writes them when a rule quarantines a message; a
// Store writes them itself for a message it accepts straight into a
// quarantine (smtp's Enqueue of a quarantined transaction), which never
// reaches the scheduler.
func LogQuarantined(ctx context.Context, log *slog.Logger, env *Envelope, q string, now time.Time) {
	if !log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	for i := range env.Rcpts {
		r := &env.Rcpts[i]
		if r.State != RcptPending {
			continue
		}
		attrs := append(resultAttrs(env, r, "none", now, statusQuarantined), slog.String("queue", q))
		log.LogAttrs(ctx, slog.LevelInfo, resultMsg, attrs...)
	}
}

func resultAttrs(env *Envelope, r *RcptState, relay string, now time.Time, status string) []slog.Attr {
	delay := now.Sub(env.Received).Seconds()
	if delay < 0 {
		delay = 0
	}
	return []slog.Attr{
		slog.String("id", env.ID),
		slog.String("from", env.From.Address().Path()),
		slog.String("to", r.Addr.Address().Path()),
		slog.String("relay", relay),
		slog.Float64("delay", math.Round(delay*1000)/1000),
		slog.Int("attempts", env.Attempts),
		slog.String("dsn", dsnCode(r.Reply)),
		slog.String("status", status),
		slog.String("reply", replyText(r.Reply)),
	}
}

// relayName names a route for the relay key: the transport, with its
// target when it has one; "none" when no route was chosen.
func relayName(r policy.Route) string {
	switch {
	case r.Transport == "":
		return "none"
	case r.Target == "":
		return r.Transport
	}
	return r.Transport + ":" + r.Target
}

// dsnCode returns the enhanced status code of a reply, or the one its
// class implies ("2.0.0", "4.0.0", "5.0.0") when it has none; "" when
// there is no reply yet (a message quarantined before any attempt).
func dsnCode(r policy.Reply) string {
	if r.Enhanced != "" {
		return r.Enhanced
	}
	if r.Code >= 200 && r.Code < 600 {
		return strconv.Itoa(r.Code/100) + ".0.0"
	}
	return ""
}

// replyText is the reply as the client saw it, "" when there is none.
func replyText(r policy.Reply) string {
	if r.IsZero() {
		return ""
	}
	return r.String()
}
