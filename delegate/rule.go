package delegate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/policy"
)

// replyUnavailable is the reply of a transaction whose delegation (or
// ClamAV scan) failed when fail-open is off: the client tries again later.
var replyUnavailable = policy.Reply{Code: 451, Enhanced: "4.7.1", Text: "Content scan unavailable, try again later"}

// Rule returns a preq or postq rule that sends the message through the
// filter of svc, replaces the message's content with what came back (the
// header fields the filter added included, TokenHeader removed), and then
// returns the verdict of then on it. then may be nil (the rule then says
// Next once the message is back).
//
// When the delegation fails (filter down, filter rejecting the message,
// nothing back within svc.Timeout, the receiver closed) the rule answers
// 451 4.7.1: at preq the client retries, at postq the
// queue defers. With svc.FailOpen it logs a warning and says Next instead,
// leaving the message as it was.
func Rule(svc *Service, then policy.MessageRule) policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if err := svc.Delegate(ctx, tx, m); err != nil {
			return svc.failed(ctx, tx, err)
		}
		if then == nil {
			return policy.Next()
		}
		return then(ctx, tx, m)
	}
}

func (s *Service) failed(ctx context.Context, tx *policy.Transaction, err error) policy.Verdict {
	attrs := []any{slog.String("id", tx.ID), slog.Any("error", err)}
	if s.FailOpen {
		s.log().WarnContext(ctx, "delegation failed; fail-open: the message goes on unscanned", attrs...)
		return policy.Next()
	}
	s.log().InfoContext(ctx, "delegation failed; deferring the transaction", attrs...)
	return policy.Deny(replyUnavailable.Code, replyUnavailable.Enhanced, replyUnavailable.Text).WithErr(err)
}

// Delegate sends m through the filter of s with the envelope of tx and
// waits, within s.Timeout and ctx, for it to come back to the receiver. On
// success m's content is the returned message (m.Replace), without
// TokenHeader. On error m is unchanged.
func (s *Service) Delegate(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	if len(tx.Rcpts) == 0 {
		return errors.New("delegate: transaction without recipients")
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	release, err := s.acquire(ctx)
	if err != nil {
		return fmt.Errorf("delegate %s: %w", s.Name, err)
	}
	defer release()

	prefix := TokenHeader + ": "
	w := &waiter{token: newToken(), from: tx.From, ch: make(chan result, 1)}
	for _, r := range tx.Rcpts {
		w.rcpts = append(w.rcpts, r.Addr)
	}
	prefix += w.token + "\r\n"
	size := int64(len(prefix)) + m.Size()
	w.limit = size + s.maxGrowth()
	if err := s.register(w); err != nil {
		return fmt.Errorf("delegate %s: %w", s.Name, err)
	}
	defer s.unregister(w)

	start := time.Now()
	body := io.MultiReader(strings.NewReader(prefix), m.Reader())
	if err := s.send(ctx, tx, body, size); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ErrTimeout, err)
		}
		return fmt.Errorf("delegate %s: filter %s: %w", s.Name, s.Filter, err)
	}
	select {
	case r := <-w.ch:
		if r.err != nil {
			return fmt.Errorf("delegate %s: %w", s.Name, r.err)
		}
		if err := m.Replace(r.file, r.size, r.file); err != nil {
			r.file.Close()
			return fmt.Errorf("delegate %s: returned message: %w", s.Name, err)
		}
		s.log().DebugContext(ctx, "message back from the filter", slog.String("id", tx.ID), slog.Duration("took", time.Since(start)))
		return nil
	case <-ctx.Done():
		return fmt.Errorf("delegate %s: %w after %s (%w)", s.Name, ErrTimeout, time.Since(start).Round(time.Millisecond), ctx.Err())
	}
}

// send runs one SMTP transaction with the filter.
func (s *Service) send(ctx context.Context, tx *policy.Transaction, body io.Reader, size int64) (err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.Filter)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// go-smtp's client has no context: closing the connection when ctx
	// ends unblocks whatever it waits for.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := smtp.NewClient(conn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.CommandTimeout = time.Until(dl)
		c.SubmissionTimeout = time.Until(dl)
	}
	if err := c.Hello(s.hostname()); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	opts := &smtp.MailOptions{Size: size}
	if tx.Params.SMTPUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); ok {
			opts.UTF8 = true
		}
	}
	if err := c.Mail(tx.From.String(), opts); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range tx.Rcpts {
		if err := c.Rcpt(r.Addr.String(), nil); err != nil {
			return fmt.Errorf("RCPT %s: %w", r.Addr.Path(), err)
		}
	}
	wc, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := io.Copy(wc, body); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := wc.CloseWithResponse(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	c.Quit() // the message is accepted; a failing QUIT changes nothing
	return nil
}
