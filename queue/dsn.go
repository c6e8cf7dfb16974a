package queue

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// Generated describes a message that the scheduler generated itself: a
// DSN or a delay warning. It round-trips through encoding/json.
type Generated struct {
	// Report is the DSN's Action: "failed", "delayed" or "delivered".
	// Empty for a DSN queued by a version that did not record it.
	Report string `json:"report,omitempty"`
	// Original is the queue ID of the message reported on ("" as Report).
	Original string `json:"original,omitempty"`
}

// GeneratedKey marks the transaction of a message the scheduler generated
// (see Generated), as the postq and delivery rules see it: such a message
// did not come from a client, and has no client address (Conn.Remote is
// zero), no SPF or DKIM verification results, and the null sender. Rules
// that judge incoming mail (SPF, DMARC, reputation) should let it pass:
//
//	if _, ok := queue.GeneratedKey.Get(tx); ok {
//		return policy.Next() // our own DSN: sign it, do not judge it
//	}
//
// Only the scheduler sets it; no client can.
const GeneratedKey policy.Key[Generated] = "queue.generated"

// report queues the DSNs owed for env's recipients that reached a final
// state: "failed" for failures (unless NOTIFY excludes FAILURE), and
// "delivered" when NOTIFY=SUCCESS asked for it; never to a null sender. The
// recipients reported are marked so that no DSN goes out twice (a crash
// between queueing a DSN and recording it may send it twice).
func (s *Scheduler) report(ctx context.Context, env *Envelope, m *policy.Message) error {
	var failed, delivered []int
	for i := range env.Rcpts {
		r := &env.Rcpts[i]
		if r.DSN || r.State == RcptPending {
			continue
		}
		switch {
		case env.From.Address().IsNull():
		case r.State == RcptFailed && r.notify("FAILURE"):
			failed = append(failed, i)
		case r.State == RcptDelivered && r.notify("SUCCESS"):
			delivered = append(delivered, i)
		}
	}
	if len(failed) > 0 {
		if err := s.bounce(ctx, env, m, failed, "failed"); err != nil {
			return err
		}
	}
	if len(delivered) > 0 {
		if err := s.bounce(ctx, env, m, delivered, "delivered"); err != nil {
			return err
		}
	}
	for i := range env.Rcpts {
		if env.Rcpts[i].State != RcptPending {
			env.Rcpts[i].DSN = true
		}
	}
	return nil
}

// delayDue returns when the next delay DSN of env is due: DelayWarning
// after its arrival, then DelayRepeat after the last one; zero when none
// is owed (no pending recipient asked NOTIFY=DELAY, the null sender, delay
// notifications off, or the message expires first).
func (s *Scheduler) delayDue(env *Envelope) time.Time {
	if s.cfg.DelayWarning < 0 || env.From.Address().IsNull() {
		return time.Time{}
	}
	if !slices.ContainsFunc(env.Rcpts, func(r RcptState) bool { return r.State == RcptPending && r.notify("DELAY") }) {
		return time.Time{}
	}
	due := env.Received.Add(s.cfg.DelayWarning)
	if !env.DelayWarned.IsZero() {
		due = env.DelayWarned.Add(s.cfg.DelayRepeat)
	}
	if !due.Before(env.Received.Add(s.cfg.Lifetime)) {
		return time.Time{} // the failure DSN comes then
	}
	return due
}

// wakeAt returns when message env (deferred) is next to be looked at: its
// next attempt, or its next delay DSN when that comes first.
func (s *Scheduler) wakeAt(env *Envelope, now time.Time) time.Time {
	at := env.NextAttempt
	if due := s.delayDue(env); !due.IsZero() && due.Before(at) {
		if !due.After(now) {
			due = now.Add(s.cfg.MinBackoff) // queueing it failed: try again later
		}
		at = due
	}
	return at
}

// warnDelayed queues a delay DSN for env's pending recipients that asked
// NOTIFY=DELAY and sets env.DelayWarned (the caller saves env); it reports
// whether it did. A failure is logged, and tried again later.
func (s *Scheduler) warnDelayed(ctx context.Context, env *Envelope, m *policy.Message, now time.Time) bool {
	var idx []int
	for i, r := range env.Rcpts {
		if r.State == RcptPending && r.notify("DELAY") {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return false
	}
	if err := s.bounce(ctx, env, m, idx, "delayed"); err != nil {
		s.log.Error("queue: cannot queue delay DSN", "id", env.ID, "error", err)
		return false
	}
	env.DelayWarned = now
	return true
}

// bounce queues one RFC 3464 DSN for the recipients idx of env, with the
// given Action, to env's sender from the null sender.
func (s *Scheduler) bounce(ctx context.Context, env *Envelope, m *policy.Message, idx []int, action string) error {
	now := s.cfg.Clock.Now()
	host := s.cfg.Hostname
	mark, err := json.Marshal(Generated{Report: action, Original: env.ID})
	if err != nil {
		return err
	}
	denv := &Envelope{
		Version:  EnvelopeVersion,
		ID:       policy.NewID(),
		Rcpts:    []RcptState{{Addr: env.From, Notify: []string{"NEVER"}, State: RcptPending}},
		Received: now,
		DSN:      true,
		Client:   Client{Helo: host, Started: now},
		Values:   map[string]json.RawMessage{string(GeneratedKey): mark},
	}
	boundary := "dsn=" + denv.ID + "/" + host
	write := func(w io.Writer) (int64, error) {
		cw := &countWriter{w: w}
		bw := bufio.NewWriter(cw)
		err := writeDSN(bw, dsnInput{
			env: env, m: m, idx: idx, action: action, host: host, from: s.cfg.BounceFrom, now: now, id: denv.ID,
			boundary: boundary, retryUntil: env.Received.Add(s.cfg.Lifetime),
			// A delay warning returns the header only, as Postfix's does.
			full: action != "delayed" && !strings.EqualFold(env.Params.Ret, "HDRS") && m.Size() <= s.cfg.MaxReturnSize,
		})
		if err == nil {
			err = bw.Flush()
		}
		return cw.n, err
	}
	// A failed write (the original message unreadable) fails the Add: no
	// truncated DSN is queued, and finish retries it later.
	if err := s.st.Add(ctx, denv, Working, write); err != nil {
		return err
	}
	s.log.Info("queue: DSN queued", "id", env.ID, "dsn", denv.ID, "action", action, "to", env.From.Address().String(), "rcpts", len(idx))
	if s.cfg.Events != nil {
		s.cfg.Events.DSNQueued(action)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type dsnInput struct {
	env        *Envelope
	m          *policy.Message
	idx        []int
	action     string
	host       string
	from       policy.Address
	now        time.Time
	id         string
	boundary   string
	full       bool
	retryUntil time.Time // for "delayed": the end of the message's lifetime
}

// clean keeps a value on one line of printable ASCII for a header field.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		if r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// writeDSN writes the DSN of in to w. Its error is that of copying the
// original message (or its header), a read error of the stored entry;
// errors of w itself stay in w for its Flush.
func writeDSN(w *bufio.Writer, in dsnInput) error {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\r\n", a...) }
	// part starts a body part: its boundary and the fields every part has.
	part := func(desc, ctype string) {
		p("--%s", in.boundary)
		p("Content-Description: %s", desc)
		p("Content-Type: %s", ctype)
	}
	env := in.env
	subject := "Undelivered Mail Returned to Sender"
	switch in.action {
	case "delivered":
		subject = "Successful Mail Delivery Report"
	case "delayed":
		subject = "Delayed Mail (still being retried)"
	}
	p("From: Mail Delivery System <%s>", clean(in.from.String()))
	p("To: %s", clean(env.From.Address().Path()))
	p("Subject: %s", subject)
	p("Date: %s", in.now.Format(time.RFC1123Z))
	p("Message-ID: <%s@%s>", in.id, in.host)
	p("Auto-Submitted: auto-replied")
	p("MIME-Version: 1.0")
	p("Content-Type: multipart/report; report-type=delivery-status;")
	p("\tboundary=\"%s\"", in.boundary)
	p("")
	p("This is a MIME-encapsulated message.")
	p("")
	part("Notification", "text/plain; charset=us-ascii")
	p("")
	p("This is the mail system at host %s.", in.host)
	p("")
	switch in.action {
	case "failed":
		p("I'm sorry to have to inform you that your message could not")
		p("be delivered to one or more recipients. It's attached below.")
	case "delayed":
		p("####################################################################")
		p("# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #")
		p("####################################################################")
		p("")
		p("Your message could not be delivered for %s.", age(in.now.Sub(env.Received)))
		p("It will be retried until it is %s old.", age(in.retryUntil.Sub(env.Received)))
	default:
		p("Your message was successfully delivered to the destination(s)")
		p("listed below.")
	}
	p("")
	for _, i := range in.idx {
		r := env.Rcpts[i]
		p("<%s>: %s", clean(r.Addr.String()), clean(r.Reply.String()))
	}
	p("")
	part("Delivery report", "message/delivery-status")
	p("")
	p("Reporting-MTA: dns; %s", in.host)
	p("X-Mtakit-Queue-ID: %s", env.ID)
	if env.Params.EnvID != "" {
		p("Original-Envelope-Id: %s", clean(env.Params.EnvID))
	}
	p("Arrival-Date: %s", env.Received.Format(time.RFC1123Z))
	for _, i := range in.idx {
		r := env.Rcpts[i]
		p("")
		p("Final-Recipient: rfc822; %s", clean(r.Addr.String()))
		if r.ORCPT != "" {
			orcpt := r.ORCPT
			if !strings.Contains(orcpt, ";") {
				orcpt = "rfc822;" + orcpt
			}
			p("Original-Recipient: %s", clean(orcpt))
		}
		p("Action: %s", in.action)
		p("Status: %s", status(r.Reply, in.action))
		if !r.Reply.IsZero() {
			p("Diagnostic-Code: smtp; %s", clean(r.Reply.String()))
		}
		if !env.LastAttempt.IsZero() {
			p("Last-Attempt-Date: %s", env.LastAttempt.Format(time.RFC1123Z))
		}
		if in.action == "delayed" {
			p("Will-Retry-Until: %s", in.retryUntil.Format(time.RFC1123Z))
		}
	}
	p("")
	if in.full {
		part("Undelivered Message", "message/rfc822")
		if b := strings.ToUpper(env.Params.Body); b == "8BITMIME" || b == "BINARYMIME" || env.Params.SMTPUTF8 {
			p("Content-Transfer-Encoding: 8bit")
		}
		p("")
		// The empty line below ends it if its last line has no CRLF.
		if _, err := in.m.WriteTo(w); err != nil {
			return fmt.Errorf("queue: DSN of %s: copying the message: %w", env.ID, err)
		}
	} else {
		part("Undelivered Message Headers", "text/rfc822-headers")
		p("")
		if _, err := in.m.Header.WriteTo(w); err != nil {
			return fmt.Errorf("queue: DSN of %s: copying the header: %w", env.ID, err)
		}
	}
	p("")
	p("--%s--", in.boundary)
	return nil
}

// age says how long d is, for people: minutes, hours or days.
func age(d time.Duration) string {
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d >= 48*time.Hour:
		return plural(int64(d/(24*time.Hour)), "day")
	case d >= 2*time.Hour:
		return plural(int64(d/time.Hour), "hour")
	}
	return plural(int64(d/time.Minute), "minute")
}

// status returns the RFC 3463 status of a recipient's reply: its final
// one, or for "delayed" its last (always a 4.x.x status).
func status(r policy.Reply, action string) string {
	if action == "delayed" {
		if strings.HasPrefix(r.Enhanced, "4.") {
			return r.Enhanced
		}
		return "4.0.0"
	}
	if r.Enhanced != "" {
		return r.Enhanced
	}
	switch {
	case action == "delivered" || r.Code >= 200 && r.Code < 300:
		return "2.0.0"
	case r.Temporary():
		return "4.0.0"
	}
	return "5.0.0"
}
