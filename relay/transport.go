package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mtakit/mtakit/internal/xtext"
	"github.com/mtakit/mtakit/policy"
)

// Timeouts bound each step of an outbound session. The defaults are RFC
// 5321 section 4.5.3.2's (Connect, which it leaves open, is 30 s as in
// Postfix). A zero field takes its default. The context given to Deliver
// bounds the whole attempt as well.
type Timeouts struct {
	Connect   time.Duration // TCP connect (and TLS handshake of implicit TLS): 30 s
	Greeting  time.Duration // the 220 greeting: 5 min
	Command   time.Duration // EHLO, STARTTLS, AUTH, MAIL, RCPT, QUIT: 5 min
	DataInit  time.Duration // the 354 reply to DATA: 2 min
	DataBlock time.Duration // each write of the message: 3 min
	DataTerm  time.Duration // the reply after the final dot: 10 min
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Connect, 30*time.Second)
	def(&t.Greeting, 5*time.Minute)
	def(&t.Command, 5*time.Minute)
	def(&t.DataInit, 2*time.Minute)
	def(&t.DataBlock, 3*time.Minute)
	def(&t.DataTerm, 10*time.Minute)
	return t
}

// TLSMode says how a transport uses TLS.
type TLSMode uint8

const (
	// TLSOpportunistic uses STARTTLS when the server offers it and sends in
	// plaintext otherwise; when the handshake fails the host is tried once
	// more in plaintext. With no TLSConfig the certificate is not verified
	// (RFC 7435: opportunistic security defends against passive
	// eavesdropping only, and a failed verification would only make us
	// fall back to plaintext).
	TLSOpportunistic TLSMode = iota
	// TLSRequired needs STARTTLS and a successful handshake; with no
	// TLSConfig the certificate is verified against the system roots and
	// the server's host name. Without TLS recipients are deferred
	// (4.7.4).
	TLSRequired
	// TLSNone never starts TLS.
	TLSNone
	// TLSImplicit connects with TLS from the start (port 465, RFC 8314);
	// Smarthost only.
	TLSImplicit
)

func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	case TLSNone:
		return "none"
	case TLSImplicit:
		return "implicit"
	}
	return fmt.Sprintf("TLSMode(%d)", m)
}

// DialFunc opens a connection; net.Dialer.DialContext is one.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Replies of the transports for failures that are not a server's reply.
var (
	replyConnLost     = policy.Reply{Code: 451, Enhanced: "4.4.2", Text: "Connection lost during the transaction"}
	replyNoTLS        = policy.Reply{Code: 450, Enhanced: "4.7.4", Text: "TLS is required but the server does not offer STARTTLS"}
	replyTLSFailed    = policy.Reply{Code: 450, Enhanced: "4.7.5", Text: "TLS is required but the handshake failed"}
	replyNoRequireTLS = policy.Reply{Code: 550, Enhanced: "5.7.30", Text: "REQUIRETLS support required but not offered by the server"}
	replyBinary       = policy.Reply{Code: 554, Enhanced: "5.6.3", Text: "Binary (BINARYMIME) content cannot be relayed"}
	replyNoUTF8       = policy.Reply{Code: 553, Enhanced: "5.6.7", Text: "Non-ASCII addresses need SMTPUTF8, which the server does not offer"}
	replyTooBig       = policy.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message too big for the server"}
	replyNoMessage    = policy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Internal error: delivery without an envelope or message"}
)

// session is the part of an outbound SMTP/LMTP session common to the
// transports.
type session struct {
	hostname  string
	lmtp      bool
	tlsMode   TLSMode
	tlsConfig *tls.Config // nil: default for the mode
	user      string
	pass      string
	insecure  bool // allow AUTH over plaintext
	timeouts  Timeouts
	log       *slog.Logger
}

// outcome is the result of one session with one server.
type outcome struct {
	replies []policy.Reply // per recipient, when the transaction was reached
	fail    policy.Reply   // why the session failed before MAIL
	tlsFail bool           // the STARTTLS handshake failed: retry in plaintext
}

func helloName(h string) string {
	if h != "" {
		return h
	}
	if n, err := os.Hostname(); err == nil && n != "" && n != "localhost" {
		return n
	}
	return "mtakit.invalid"
}

func (s *session) tlsConfigFor(serverName string, required bool) *tls.Config {
	var cfg *tls.Config
	if s.tlsConfig != nil {
		cfg = s.tlsConfig.Clone()
	} else {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if !required {
			cfg.InsecureSkipVerify = true
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
	}
	return cfg
}

// failReply turns a network error or an unexpected reply into a session
// failure.
func failReply(r reply, err error, what string) policy.Reply {
	if err != nil {
		code := "4.4.2"
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			code = "4.4.7"
		}
		return policy.Reply{Code: 451, Enhanced: code, Text: fmt.Sprintf("%s: %v", what, err)}
	}
	return finalReply(r)
}

// finalReply maps a server's negative or unexpected reply to a recipient's.
func finalReply(r reply) policy.Reply {
	if r.Code >= 200 && r.Code < 600 && r.Code/100 != 3 {
		return r.policyReply()
	}
	return policy.Reply{Code: 451, Enhanced: "4.5.0", Text: fmt.Sprintf("Unexpected reply: %d %s", r.Code, r.text())}
}

// run does one session over conn to serverName: greeting, EHLO, STARTTLS,
// AUTH, then the transaction for rcpts. plaintext forbids STARTTLS (the
// retry after a failed handshake).
func (s *session) run(ctx context.Context, conn net.Conn, serverName string, d *policy.Delivery, rcpts []policy.Recipient, plaintext bool) outcome {
	c := newClient(ctx, conn, s.lmtp, s.timeouts)
	defer c.close()
	log := s.log.With(slog.String("server", serverName), slog.String("addr", conn.RemoteAddr().String()))
	// REQUIRETLS (RFC 8689) binds relaying, not the final hand-off to a
	// local delivery agent over LMTP.
	msgRequireTLS := d.Tx.Params.RequireTLS && !s.lmtp
	requireTLS := s.tlsMode == TLSRequired || msgRequireTLS
	if s.tlsMode == TLSImplicit {
		tc := tls.Client(conn, s.tlsConfigFor(serverName, true))
		c.deadline(c.timeouts.Connect)
		if err := tc.HandshakeContext(ctx); err != nil {
			return outcome{fail: policy.Reply{Code: 451, Enhanced: "4.7.5", Text: "TLS handshake failed: " + err.Error()}}
		}
		c.setConn(tc)
		c.tls = true
	}
	r, err := c.greet()
	if err != nil || r.Code != 220 {
		return outcome{fail: failReply(r, err, "greeting")}
	}
	name := helloName(s.hostname)
	if r, err = c.hello(name); err != nil || r.Code != 250 {
		return outcome{fail: failReply(r, err, "EHLO")}
	}
	if !c.tls && s.tlsMode != TLSNone && !plaintext && c.has("STARTTLS") {
		r, err := c.startTLS(s.tlsConfigFor(serverName, requireTLS))
		switch {
		case err != nil && r.Code == 220:
			log.Warn("STARTTLS handshake failed", slog.String("error", err.Error()))
			if requireTLS {
				return outcome{fail: replyTLSFailed}
			}
			return outcome{tlsFail: true, fail: failReply(reply{}, err, "STARTTLS")}
		case err != nil:
			return outcome{fail: failReply(r, err, "STARTTLS")}
		case r.Code == 220:
			if r, err = c.hello(name); err != nil || r.Code != 250 {
				return outcome{fail: failReply(r, err, "EHLO after STARTTLS")}
			}
		}
	}
	if requireTLS && !c.tls {
		return outcome{fail: replyNoTLS}
	}
	if s.user != "" {
		if !c.tls && !s.insecure {
			return outcome{fail: policy.Reply{Code: 450, Enhanced: "4.7.0", Text: "Refusing to send credentials without TLS"}}
		}
		if !strings.Contains(" "+strings.ToUpper(c.ext["AUTH"])+" ", " PLAIN ") {
			return outcome{fail: policy.Reply{Code: 450, Enhanced: "4.7.0", Text: "The server does not offer AUTH PLAIN"}}
		}
		r, err := c.authPlain(s.user, s.pass)
		if err != nil || r.Code != 235 {
			f := failReply(r, err, "AUTH")
			if f.Permanent() {
				// A refused login is our configuration's fault: keep the
				// mail and try again later, as Postfix's soft bounce.
				f = policy.Reply{Code: 450, Enhanced: "4.7.8", Text: "Authentication failed: " + f.Text}
			}
			return outcome{fail: f}
		}
	}
	replies := s.transact(ctx, c, d, rcpts, log)
	c.quit()
	return outcome{replies: replies}
}

// deliver dials addr and runs a session with serverName over it; when the
// STARTTLS handshake fails (opportunistic TLS) it dials once more and
// retries in plaintext. The outcome has replies when the transaction was
// reached, else the reply that fails the attempt. log names the server.
func (s *session) deliver(ctx context.Context, dialFn DialFunc, network, addr, serverName string, d *policy.Delivery, rcpts []policy.Recipient, log *slog.Logger) outcome {
	for attempt := 0; attempt < 2; attempt++ {
		conn, err := dial(ctx, dialFn, s.timeouts, network, addr)
		if err != nil {
			log.Info("connect failed", slog.String("error", err.Error()))
			return outcome{fail: connectFailed(addr, err)}
		}
		o := s.run(ctx, conn, serverName, d, rcpts, attempt > 0)
		if o.replies != nil {
			return o
		}
		if !o.tlsFail {
			log.Info("session failed", slog.String("reply", o.fail.String()))
			return o
		}
		log.Info("retrying in plaintext after a failed TLS handshake")
	}
	return outcome{fail: replyTLSFailed}
}

// transact runs MAIL, RCPT per recipient and DATA, returning a reply per
// recipient.
func (s *session) transact(ctx context.Context, c *client, d *policy.Delivery, rcpts []policy.Recipient, log *slog.Logger) []policy.Reply {
	out := make([]policy.Reply, len(rcpts))
	all := func(r policy.Reply) []policy.Reply {
		for i := range out {
			if out[i].IsZero() {
				out[i] = r
			}
		}
		return out
	}
	if d.Message == nil {
		return all(replyNoMessage)
	}
	p := d.Tx.Params
	if s.lmtp {
		p.RequireTLS = false
	}
	if p.RequireTLS && !c.has("REQUIRETLS") {
		return all(replyNoRequireTLS)
	}
	if strings.EqualFold(p.Body, "BINARYMIME") {
		return all(replyBinary)
	}
	nonASCII := needsUTF8(d.Tx.From, rcpts)
	utf8 := c.has("SMTPUTF8") && (p.SMTPUTF8 || nonASCII)
	if !c.has("SMTPUTF8") && nonASCII {
		return all(replyNoUTF8)
	}
	size := d.Message.Size()
	if v, ok := c.ext["SIZE"]; ok {
		var max int64
		if _, err := fmt.Sscan(v, &max); err == nil && max > 0 && size > max {
			return all(replyTooBig)
		}
	}

	var mail strings.Builder
	mail.WriteString("MAIL FROM:" + d.Tx.From.Path())
	if c.has("SIZE") {
		fmt.Fprintf(&mail, " SIZE=%d", size)
	}
	if strings.EqualFold(p.Body, "8BITMIME") && c.has("8BITMIME") {
		mail.WriteString(" BODY=8BITMIME")
	}
	if utf8 {
		mail.WriteString(" SMTPUTF8")
	}
	if p.RequireTLS {
		mail.WriteString(" REQUIRETLS")
	}
	dsn := c.has("DSN")
	if dsn {
		if p.Ret != "" {
			mail.WriteString(" RET=" + strings.ToUpper(p.Ret))
		}
		if p.EnvID != "" {
			mail.WriteString(" ENVID=" + xtext.Encode(p.EnvID))
		}
	}
	r, err := c.cmd(c.timeouts.Command, mail.String())
	if err != nil {
		return all(failReply(r, err, "MAIL"))
	}
	if r.Code/100 != 2 {
		return all(finalReply(r))
	}

	var accepted []int
	for i, rc := range rcpts {
		var cmd strings.Builder
		cmd.WriteString("RCPT TO:" + rc.Addr.Path())
		if dsn {
			if len(rc.Notify) > 0 {
				cmd.WriteString(" NOTIFY=" + strings.ToUpper(strings.Join(rc.Notify, ",")))
			}
			if rc.ORCPT != "" {
				if typ, addr, ok := strings.Cut(rc.ORCPT, ";"); ok {
					cmd.WriteString(" ORCPT=" + typ + ";" + xtext.Encode(addr))
				}
			}
		}
		r, err := c.cmd(c.timeouts.Command, cmd.String())
		if err != nil {
			log.Warn("connection lost at RCPT", slog.String("error", err.Error()))
			return all(failReply(r, err, "RCPT"))
		}
		if r.Code/100 == 2 {
			accepted = append(accepted, i)
			continue
		}
		out[i] = finalReply(r)
	}
	if len(accepted) == 0 {
		return out
	}

	r, sent, err := c.data(d.Message.Reader())
	switch {
	case err != nil:
		log.Warn("connection lost during DATA", slog.String("error", err.Error()))
		lost := replyConnLost
		if sent {
			lost.Text = "Connection lost after the end of data: " + err.Error()
		} else {
			lost.Text = "Connection lost during DATA: " + err.Error()
		}
		return all(lost)
	case !sent:
		return all(finalReply(r))
	}
	if !s.lmtp {
		res := finalReply(r)
		if r.Code/100 == 2 {
			res = r.policyReply()
		}
		return all(res)
	}
	// LMTP: one reply per accepted recipient, in RCPT order.
	for k, i := range accepted {
		if k > 0 {
			r, err = c.next()
			if err != nil {
				log.Warn("connection lost reading LMTP replies", slog.String("error", err.Error()))
				return all(failReply(r, err, "LMTP DATA"))
			}
		}
		if r.Code/100 == 2 {
			out[i] = r.policyReply()
		} else {
			out[i] = finalReply(r)
		}
	}
	return out
}

func needsUTF8(from policy.Address, rcpts []policy.Recipient) bool {
	if !isASCII(from.Local) || !isASCII(from.Domain) {
		return true
	}
	for _, r := range rcpts {
		if !isASCII(r.Addr.Local) || !isASCII(r.Addr.Domain) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// connectFailed is the reply for a connection that could not be opened.
func connectFailed(addr string, err error) policy.Reply {
	return policy.Reply{Code: 451, Enhanced: "4.4.1", Text: fmt.Sprintf("connect to %s: %v", addr, err)}
}

// checkDelivery refuses a malformed delivery (a bug of the caller) with a
// temporary error for every recipient, so nothing is lost.
func checkDelivery(d *policy.Delivery) ([]policy.Reply, bool) {
	if d == nil {
		return nil, true
	}
	if d.Tx == nil || d.Message == nil {
		return sameReply(len(d.Rcpts), replyNoMessage), true
	}
	return nil, false
}

// sameReply gives every recipient r.
func sameReply(n int, r policy.Reply) []policy.Reply {
	out := make([]policy.Reply, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// dial opens a connection with the connect timeout.
func dial(ctx context.Context, fn DialFunc, t Timeouts, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.withDefaults().Connect)
	defer cancel()
	if fn == nil {
		var d net.Dialer
		fn = d.DialContext
	}
	return fn(ctx, network, addr)
}

func orDefault(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}
