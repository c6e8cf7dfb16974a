package delegate

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/policy"
)

// backend is the receiver's go-smtp backend.
type backend struct{ svc *Service }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	// peerListener already refused other peers; check again in case the
	// connection came through another path.
	if !b.svc.allowed(c.Conn().RemoteAddr()) {
		return nil, replyNotAllowed
	}
	return &session{svc: b.svc, peer: c.Conn().RemoteAddr().String()}, nil
}

// session is one SMTP transaction of the filter with the receiver.
type session struct {
	svc     *Service
	peer    string
	from    policy.Address
	hasFrom bool
	rcpts   []policy.Address
}

func smtpErr(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

var (
	replyNotAllowed   = smtpErr(554, smtp.EnhancedCode{5, 7, 1}, "Not an allowed filter")
	replyNoDelegation = smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "No such delegation")
	replyBadAddress   = smtpErr(501, smtp.EnhancedCode{5, 1, 3}, "Bad address syntax")
	replyNoToken      = smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "No delegation token in the message")
	replyMismatch     = smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Envelope does not match the delegation")
	replyHeaderSize   = smtpErr(552, smtp.EnhancedCode{5, 3, 4}, "Header too large")
	replyTooLarge     = smtpErr(552, smtp.EnhancedCode{5, 3, 4}, "Message grew too large in the filter")
	replyLocalError   = smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Local error, try again later")
	replyBadSequence  = smtpErr(503, smtp.EnhancedCode{5, 5, 1}, "Bad sequence of commands")
)

func (s *session) Reset() { s.from, s.hasFrom, s.rcpts = policy.Address{}, false, nil }

func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	a, err := parsePath(from)
	if err != nil {
		return replyBadAddress
	}
	if !s.svc.expects(a, nil) {
		s.svc.log().Warn("receiver refused a sender no delegation waits for", slog.String("peer", s.peer), slog.String("from", from))
		return replyNoDelegation
	}
	s.from, s.hasFrom = a, true
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !s.hasFrom {
		return replyBadSequence
	}
	a, err := parsePath(to)
	if err != nil || a.IsNull() {
		return replyBadAddress
	}
	if !s.svc.expects(s.from, &a) {
		s.svc.log().Warn("receiver refused a recipient no delegation waits for", slog.String("peer", s.peer), slog.String("rcpt", to))
		return replyNoDelegation
	}
	s.rcpts = append(s.rcpts, a)
	return nil
}

// parsePath parses an address as go-smtp's server passes it: without angle
// brackets and with the quotes of a quoted local part removed, so the split
// is at the last "@" and the local part is taken as it is.
func parsePath(s string) (policy.Address, error) {
	i := strings.LastIndexByte(s, '@')
	if i <= 0 || strings.ContainsAny(s, "\r\n\x00") {
		return policy.ParseAddress(s)
	}
	dom, err := policy.NormalizeDomain(s[i+1:])
	if err != nil {
		return policy.Address{}, err
	}
	return policy.Address{Local: s[:i], Domain: dom}, nil
}

// Data takes the token out of the returned message, checks that a
// delegation with the same envelope waits for it, stores the message in a
// temporary file and hands it over. The reply is 250 only when the waiting
// delegation took the message.
func (s *session) Data(r io.Reader) error {
	log := s.svc.log().With(slog.String("peer", s.peer))
	br := bufio.NewReaderSize(r, 64<<10)
	token, writeTo, err := readReturned(br)
	switch {
	case errors.Is(err, policy.ErrHeaderTooLarge):
		return replyHeaderSize
	case errors.Is(err, errNoToken), errors.Is(err, errBadToken):
		log.Warn("receiver refused a message without a valid delegation token", slog.Any("error", err))
		return replyNoToken
	case err != nil:
		log.Warn("receiver could not read a returned message", slog.Any("error", err))
		return replyLocalError
	}
	w := s.svc.lookup(token)
	if w == nil {
		log.Warn("receiver refused a message for no waiting delegation", slog.String("token", token))
		return replyNoDelegation
	}
	if !w.from.Equal(s.from) || len(s.rcpts) == 0 {
		return replyMismatch
	}
	for _, a := range s.rcpts {
		if !containsAddr(w.rcpts, a) {
			return replyMismatch
		}
	}

	f, err := os.CreateTemp(s.svc.TempDir, "delegate-*.eml")
	if err != nil {
		log.Error("receiver cannot store a returned message", slog.Any("error", err))
		return replyLocalError
	}
	tf := &tempFile{File: f}
	lw := &limitWriter{w: f, n: w.limit}
	size, err := writeTo(lw)
	if err != nil {
		tf.Close()
		if errors.Is(err, ErrTooLarge) {
			// Fail the delegation now rather than at its timeout.
			s.svc.deliver(token, result{err: ErrTooLarge})
			return replyTooLarge
		}
		log.Error("receiver cannot store a returned message", slog.Any("error", err))
		return replyLocalError
	}
	if !s.svc.deliver(token, result{file: tf, size: size}) {
		tf.Close()
		log.Warn("receiver refused a message whose delegation stopped waiting", slog.String("token", token))
		return replyNoDelegation
	}
	log.Debug("receiver took a returned message", slog.String("token", token), slog.Int64("size", size))
	return nil
}

// limitWriter fails with ErrTooLarge once more than n bytes were written.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, ErrTooLarge
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}
