package policy

import (
	"fmt"
	"strconv"
)

// Stage is one point of the path of a message where rules run.
type Stage uint8

// The stages, in the order a message meets them.
const (
	StageConnect  Stage = iota + 1 // after TCP accept, before the greeting
	StageHelo                      // HELO or EHLO
	StageAuth                      // after the credentials of AUTH were verified
	StageMail                      // MAIL FROM
	StageRcpt                      // each RCPT TO
	StagePreQ                      // after DATA, before the message is queued
	StagePostQ                     // after the 250, before delivery
	StageDelivery                  // per recipient, choosing its route
)

var stageNames = [...]string{"", "connect", "helo", "auth", "mail", "rcpt", "preq", "postq", "delivery"}

func (s Stage) String() string {
	if int(s) < len(stageNames) && s != 0 {
		return stageNames[s]
	}
	return "stage(" + strconv.Itoa(int(s)) + ")"
}

// Stages lists every stage in order.
func Stages() []Stage {
	return []Stage{StageConnect, StageHelo, StageAuth, StageMail, StageRcpt, StagePreQ, StagePostQ, StageDelivery}
}

// Reply is an SMTP reply as the client sees it. Enhanced is the RFC 3463
// status code ("5.7.1"); it may be empty for codes that have none (220, 221).
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

func (r Reply) String() string {
	if r.Enhanced == "" {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// IsZero reports whether r is unset.
func (r Reply) IsZero() bool { return r.Code == 0 }

// Temporary reports whether r is a 4xx reply.
func (r Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// Permanent reports whether r is a 5xx reply.
func (r Reply) Permanent() bool { return r.Code >= 500 && r.Code < 600 }

// Kind is what a verdict decides.
type Kind uint8

// The verdict kinds; see Verdict.
const (
	KindNext        Kind = iota // no decision: the next rule runs
	KindAccept                  // accept this stage, skip its remaining rules
	KindForceAccept             // accept, and skip every later rule of the transaction
	KindDeny                    // refuse with Verdict.Reply
	KindQuarantine              // accept, then store in quarantine/Verdict.Queue, never deliver
	KindInfo                    // no decision, but Verdict.Reply is the reply if the stage accepts
)

var kindNames = [...]string{"next", "accept", "force_accept", "deny", "quarantine", "info"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Verdict is what a rule returns. Build one with Next, Accept, ForceAccept,
// Deny, Defer, Fail, Quarantine or Info.
//
// The semantics follow vSMTP's statuses:
//
//   - Next: no opinion; the next rule of the stage runs. When every rule of a
//     stage says Next the stage accepts, except the rcpt stage, which denies
//     (see Chain): a forgotten rule must never make an open relay.
//   - Accept: the stage accepts now; its remaining rules are skipped, later
//     stages run.
//   - ForceAccept: the stage accepts and every later filtering rule of the
//     transaction is skipped (up to and including postq). Delivery rules
//     still run, since they route rather than filter. Given at connect, helo
//     or auth it holds for every transaction of the connection (at helo or
//     auth: until STARTTLS, see Conn.ResetTLS). Given at rcpt it also
//     admits the transaction's later recipients: never force-accept one
//     recipient (postmaster, say) where an open relay could follow it.
//   - Deny: the command is refused with Reply. At connect the greeting is a
//     554 and the connection closes; at rcpt only that recipient is refused;
//     at postq the message bounces; at delivery the recipient fails with
//     Reply (4xx: retried later, 5xx: bounced).
//   - Quarantine: the client gets the normal positive reply, later rules are
//     skipped and the message is stored in the named quarantine queue,
//     never delivered. Given before DATA it marks the transaction (at
//     connect, helo or auth: every transaction of the connection, as for
//     ForceAccept). The rcpt rules still run for each recipient of a
//     quarantined transaction: quarantine is about the message, and a
//     release must never relay to a recipient no rule accepted.
//   - Info: no decision, like Next, but Reply becomes the positive reply of
//     the stage if it accepts (for example "250 2.1.0 Sender OK, SPF pass").
type Verdict struct {
	Kind  Kind
	Reply Reply  // for Deny, Info, and optionally Accept; for Quarantine, Text says why (see QuarantineBecause)
	Queue string // for Quarantine
	Err   error  // for the log only, never sent to the client
}

// Next is the verdict of a rule that has no opinion. It is the zero
// Verdict.
func Next() Verdict { return Verdict{} }

// Accept accepts the current stage and skips its remaining rules.
func Accept() Verdict { return Verdict{Kind: KindAccept} }

// ForceAccept accepts and skips every later rule of the transaction.
func ForceAccept() Verdict { return Verdict{Kind: KindForceAccept} }

// Deny refuses with the given reply. Code must be 4xx or 5xx; enhanced is
// the RFC 3463 code such as "5.7.1".
func Deny(code int, enhanced, text string) Verdict {
	if code < 400 || code > 599 {
		// A deny that would read as success is a bug in the rule; fail
		// closed with a temporary error rather than accept.
		return Fail(fmt.Errorf("policy: Deny with non-error code %d", code))
	}
	return Verdict{Kind: KindDeny, Reply: Reply{Code: code, Enhanced: enhanced, Text: text}}
}

// Defer refuses temporarily with 451 and the given enhanced code and text:
// the client should try again later.
func Defer(enhanced, text string) Verdict { return Deny(451, enhanced, text) }

// Fail is the verdict of a rule that could not decide because of an error of
// ours (a database down, a DNS timeout): 451 4.3.0 with a generic text; err
// goes to the log, never to the client.
func Fail(err error) Verdict {
	return Verdict{Kind: KindDeny, Reply: replyInternalError, Err: err}
}

// replyInternalError is the reply for our own failures (Fail).
var replyInternalError = Reply{Code: 451, Enhanced: "4.3.0", Text: "Internal error, try again later"}

// Quarantine accepts the message but stores it in quarantine/<queue>.
func Quarantine(queue string) Verdict { return Verdict{Kind: KindQuarantine, Queue: queue} }

// QuarantineBecause is Quarantine with the reason the message is kept
// ("X-Virus-Infected: Eicar-Signature"): the queue records it with the
// rule's name in the message's envelope for the operator who reviews the
// quarantine (queue.Envelope.Quarantine). It is never sent to the client.
func QuarantineBecause(queue, reason string) Verdict {
	return Verdict{Kind: KindQuarantine, Queue: queue, Reply: Reply{Text: reason}}
}

// Info goes on like Next, and sets the reply the client receives if the
// stage accepts. Code must be 2xx or 3xx.
func Info(code int, enhanced, text string) Verdict {
	return Verdict{Kind: KindInfo, Reply: Reply{Code: code, Enhanced: enhanced, Text: text}}
}

// WithErr returns v carrying err for the log.
func (v Verdict) WithErr(err error) Verdict { v.Err = err; return v }

// Decides reports whether v ends the evaluation of its stage.
func (v Verdict) Decides() bool { return v.Kind != KindNext && v.Kind != KindInfo }

func (v Verdict) String() string {
	switch v.Kind {
	case KindDeny, KindInfo:
		return v.Kind.String() + "(" + v.Reply.String() + ")"
	case KindQuarantine:
		return "quarantine(" + v.Queue + ")"
	}
	return v.Kind.String()
}
