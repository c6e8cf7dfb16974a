package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// replyReturned is the reply recorded for the recipients of a message an
// operator bounced (Admin.Bounce), shown in its DSN.
func replyReturned() policy.Reply {
	return policy.Reply{Code: 550, Enhanced: "5.0.0", Text: "Message returned to sender by the mail system administrator"}
}

// Hold moves message id to the hold queue, where it is kept and never
// delivered until Release (Postfix's postsuper -h). Only a message waiting
// for delivery can be held: one in working, deliver or deferred. It waits
// while a delivery attempt of the message is under way.
func (a *Admin) Hold(ctx context.Context, id string) error {
	q, env, unlock, err := a.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	switch q {
	case Working, Deliver, Deferred:
	default:
		return fmt.Errorf("%w: cannot hold a message of %s", ErrBadQueue, q)
	}
	return a.Store.Save(ctx, env, q, Hold, nil)
}

// Release sends a held or quarantined message on to delivery now. From a
// quarantine it goes to deliver as it is: the postq rules, whose verdict
// the operator overrides, do not run again (the delivery rules do, as for
// every attempt: a message a delivery rule quarantined is quarantined
// again unless the rule changed its mind). From hold it goes to deliver,
// or to working when its postq rules had not run yet. It waits while a
// delivery attempt of the message is under way.
func (a *Admin) Release(ctx context.Context, id string) error {
	q, env, unlock, err := a.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if q != Hold && !strings.HasPrefix(q, QuarantinePrefix) {
		return fmt.Errorf("%w: cannot release a message of %s (only hold and quarantine)", ErrBadQueue, q)
	}
	to := Deliver
	if q == Hold && !env.PostQDone {
		to = Working
	}
	return a.move(ctx, q, env, to)
}

// Bounce returns message id to its sender: each recipient not yet
// delivered fails with "550 5.0.0 Message returned to sender by the mail
// system administrator", and the message goes to deliver, where the
// scheduler queues the DSN owed (as for any failure: none to the null
// sender or for NOTIFY=NEVER) and then deletes it (Envelope.Returned).
// Without a running scheduler that happens when one starts. A message of
// working, deliver, deferred, hold or a quarantine can be bounced. It
// waits while a delivery attempt of the message is under way.
func (a *Admin) Bounce(ctx context.Context, id string) error {
	q, env, unlock, err := a.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	switch {
	case q == Working, q == Deliver, q == Deferred, q == Hold, strings.HasPrefix(q, QuarantinePrefix):
	default:
		return fmt.Errorf("%w: cannot bounce a message of %s", ErrBadQueue, q)
	}
	if !env.pending() {
		return fmt.Errorf("%w: %s has no recipient left to bounce", ErrBadQueue, id)
	}
	for i := range env.Rcpts {
		if r := &env.Rcpts[i]; r.State == RcptPending {
			r.State, r.Reply = RcptFailed, replyReturned()
		}
	}
	env.Returned = true
	env.PostQDone = true // returned as it is: no rule runs on it any more
	env.NextAttempt = a.now()
	env.InFlight, env.Crashes = false, 0
	return a.save(ctx, env, q, Deliver)
}
