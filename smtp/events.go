package smtp

import (
	"errors"
	"io"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
)

// Events receives what happens on a Server's connections, for metrics
// (*metrics.Metrics of mtakit/policy/metrics is one). Set it as
// Config.Events; nil reports nothing and costs nothing.
//
// The methods are called synchronously on the goroutine of the connection
// the event is about, concurrently for different connections: they must be
// safe for concurrent use, fast, and never block (count, do not log or
// write). listener is the Listener.Name of the connection.
type Events interface {
	// Connected is called once per TCP connection a listener accepted.
	// admitted is true when the client gets the greeting and a session
	// starts; false when it is turned away before: over a connection
	// limit, denied by a connect rule, a failed implicit TLS handshake,
	// or the server stopping.
	Connected(listener string, admitted bool)
	// Disconnected is called when the connection of an admitted client
	// (Connected with admitted true) closes: each session ends once.
	Disconnected(listener string)
	// TLSHandshake is called after each TLS handshake, STARTTLS or
	// implicit TLS; err is nil when it succeeded.
	TLSHandshake(listener string, err error)
	// AuthAttempted is called when an AUTH command ends, with the code of
	// its reply: 235 authenticated, 535 or 501 refused (wrong credentials,
	// an auth rule's refusal, a malformed exchange), 454 a temporary
	// failure (the Authenticator failed, or limits failed attempts).
	AuthAttempted(listener string, code int)
	// MessageReceived is called when a message (DATA or BDAT) has been
	// answered: code is the reply's, 250 when it was queued, 4xx or 5xx
	// when it was refused; size is the bytes of the message the client
	// sent (after dot-unstuffing, without our Received field), as far as
	// it was read.
	MessageReceived(listener string, code int, size int64)
}

// connected reports a connection to Config.Events.
func (s *Server) connected(listener string, admitted bool) {
	if e := s.cfg.Events; e != nil {
		e.Connected(listener, admitted)
	}
}

// tlsHandshake reports a TLS handshake to Config.Events.
func (s *Server) tlsHandshake(listener string, err error) {
	if e := s.cfg.Events; e != nil {
		e.TLSHandshake(listener, err)
	}
}

// authEvents makes the end of the exchange of sv an AuthAttempted event,
// when Config.Events is set.
func (s *Server) authEvents(sv sasl.Server, listener string) sasl.Server {
	if s.cfg.Events == nil {
		return sv
	}
	return &authEvents{Server: sv, ev: s.cfg.Events, listener: listener}
}

type authEvents struct {
	sasl.Server
	ev       Events
	listener string
}

func (a *authEvents) Next(resp []byte) ([]byte, bool, error) {
	challenge, done, err := a.Server.Next(resp)
	if done || err != nil {
		code := 235
		if err != nil {
			code = 454
			var se *gosmtp.SMTPError
			if errors.As(err, &se) {
				code = se.Code
			}
		}
		a.ev.AuthAttempted(a.listener, code)
	}
	return challenge, done, err
}

// sizeReader counts the bytes of a message read from go-smtp, for
// MessageReceived. It lives in the session: no allocation per message.
type sizeReader struct {
	r io.Reader
	n int64
}

func (c *sizeReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// startSession tells Events that the client of c is admitted, unless c
// was closed meanwhile (Shutdown, Close): then it was turned away. Under
// c.mu, so that Close, which reads session there, sends Disconnected
// after Connected, or neither.
func (c *conn) startSession(listener string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv.cfg.Events == nil {
		return
	}
	c.session = !c.closed
	c.srv.connected(listener, c.session)
}
