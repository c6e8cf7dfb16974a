package smtp

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// Replies of our own. Every error handed to go-smtp is an *SMTPError: any
// other error would become a permanent 554 (Data) or leak its text.
var (
	errInternal     = &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Internal error, try again later"}
	errShutdown     = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 3, 2}, Message: "Server shutting down, try again later"}
	errAuthRequired = &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errTLSRequired  = &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errBadSender    = &gosmtp.SMTPError{Code: 553, EnhancedCode: gosmtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errBadRcpt      = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	errNoTx         = &gosmtp.SMTPError{Code: 503, EnhancedCode: gosmtp.EnhancedCode{5, 5, 1}, Message: "Bad sequence of commands"}
	errAuthFailed   = &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthTemp     = &gosmtp.SMTPError{Code: 454, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	errAuthSyntax   = &gosmtp.SMTPError{Code: 501, EnhancedCode: gosmtp.EnhancedCode{5, 5, 2}, Message: "Malformed authentication response"}
	errNoConn       = &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Internal error, closing connection"}
	errNoHelo       = &gosmtp.SMTPError{Code: 503, EnhancedCode: gosmtp.EnhancedCode{5, 5, 1}, Message: "Send EHLO first"}
	errAuthNeedsTLS = &gosmtp.SMTPError{Code: 523, EnhancedCode: gosmtp.EnhancedCode{5, 7, 10}, Message: "TLS is required"}
)

// replyError turns a policy reply into the error go-smtp sends as is.
func replyError(r policy.Reply) *gosmtp.SMTPError {
	if r.Code < 400 || r.Code > 599 {
		return errInternal
	}
	e := &gosmtp.SMTPError{Code: r.Code, Message: sanitizeText(r.Text)}
	if e.Message == "" {
		e.Message = "Rejected"
	}
	e.EnhancedCode = parseEnhanced(r.Enhanced, r.Code)
	return e
}

// ruleAttr names the rule that decided a stage, for a log line; when none
// did (every rule said Next) it is the empty Attr, which handlers leave out.
func ruleAttr(res policy.Result) slog.Attr {
	if res.Rule == "" {
		return slog.Attr{}
	}
	return slog.String("rule", res.Rule)
}

// positiveReply is r, a 2xx reply, in the form go-smtp sends: a command's
// returned error is its reply whatever the code, the only way to answer a
// positive reply of our own (the queue ID after DATA) rather than go-smtp's
// fixed one.
func positiveReply(r policy.Reply) *gosmtp.SMTPError {
	return &gosmtp.SMTPError{Code: r.Code, EnhancedCode: parseEnhanced(r.Enhanced, r.Code), Message: r.Text}
}

// parseEnhanced parses "5.7.1"; a missing or malformed code gives X.0.0
// with X the class of code. It runs for every 250 to DATA, so it cuts the
// string instead of splitting it into a new slice.
func parseEnhanced(s string, code int) gosmtp.EnhancedCode {
	def := gosmtp.EnhancedCode{code / 100, 0, 0}
	class, rest, ok1 := strings.Cut(s, ".")
	subject, detail, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(detail, ".") {
		return def
	}
	parts := [3]string{class, subject, detail}
	var ec gosmtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || len(p) > 3 {
			return def
		}
		ec[i] = n
	}
	if ec[0] != code/100 {
		return def
	}
	return ec
}

// The lines logged for every command and message go through LogAttrs:
// Logger.Info's ...any arguments cost an allocation each (boxing) even
// when the handler drops the record. Same attributes, same output.

// logging reports whether Info records are wanted, so that a caller can
// skip building attributes (addresses are formatted for the log).
func logging(l *slog.Logger) bool { return l.Enabled(logCtx, slog.LevelInfo) }

// logCtx is the context of log records, as Logger.Info gives them. (LogAttrs
// is called at each place rather than through a helper of ours: the
// record's source is the caller of LogAttrs.)
var logCtx = context.Background()

// backend makes a session per go-smtp session: at the first EHLO (go-smtp
// never sees STARTTLS, which conn does below it).
type backend struct {
	srv *Server
	lc  Listener
}

// connOf finds our conn below go-smtp's.
func connOf(gc *gosmtp.Conn) *conn {
	c, _ := gc.Conn().(*conn)
	return c
}

func (b *backend) NewSession(gc *gosmtp.Conn) (gosmtp.Session, error) {
	c := connOf(gc)
	if c == nil || c.dead() {
		return nil, errNoConn
	}
	s := &session{srv: b.srv, lc: b.lc, c: c, gc: gc}
	if rep := s.helo(gc.Hostname()); rep != nil {
		return nil, replyError(*rep)
	}
	return s, nil
}

// session is go-smtp's session: the state of one transaction. Facts about
// the connection live in conn.
type session struct {
	srv        *Server
	lc         Listener
	c          *conn
	gc         *gosmtp.Conn
	heloName   string        // the HELO name the helo rules last judged
	heloDenied *policy.Reply // a second EHLO's name was refused
	tx         *policy.Transaction
	size       sizeReader // counts a message's bytes for Events
}

func (s *session) ctx() (context.Context, context.CancelFunc) {
	return lazyctx.WithTimeout(s.c.ctx, s.srv.limits.CommandTimeout)
}

// helo runs the helo rules for name; a non-nil reply is a refusal.
func (s *session) helo(name string) *policy.Reply {
	s.heloName = name
	ctx, cancel := s.ctx()
	defer cancel()
	res := s.srv.cfg.Chain.EvalHelo(ctx, s.c.pc, name)
	s.c.log.LogAttrs(logCtx, slog.LevelInfo, "helo", slog.String("helo", name), slog.String("verdict", res.Verdict.String()), ruleAttr(res))
	if !res.Accepted() {
		r := res.Reply
		return &r
	}
	// An Info or Accept reply becomes the text of the reply's first line.
	s.c.mu.Lock()
	s.c.helloText = nil
	if res.Reply != policy.DefaultReply(policy.StageHelo) {
		s.c.helloText = []byte(replyText(res.Reply, "Hello"))
	}
	s.c.mu.Unlock()
	return nil
}

// Reset runs on RSET, after DATA, and on a later HELO/EHLO (conn's filter
// tells which). The helo rules run again for a new name, and for any name
// after STARTTLS.
func (s *session) Reset() {
	s.tx = nil
	c := s.c
	c.inTx = false
	if !c.greeting {
		return
	}
	if h := s.gc.Hostname(); h != "" && (h != s.heloName || c.needHelo) {
		c.needHelo = false
		s.heloDenied = s.helo(h)
	}
}

func (s *session) Logout() error {
	s.tx = nil
	return nil
}

func (s *session) Mail(from string, opts *gosmtp.MailOptions) error {
	c := s.c
	s.tx = nil
	c.inTx = false
	if c.dead() {
		return errNoConn
	}
	if c.needHelo {
		return errNoHelo
	}
	if s.heloDenied != nil {
		return replyError(*s.heloDenied)
	}
	if s.lc.authRequired() && !c.pc.Authenticated() {
		if c.pc.TLS == nil && !s.lc.AllowInsecureAuth {
			return errTLSRequired
		}
		return errAuthRequired
	}
	c.pc.ESMTP = c.isESMTP()
	addr, err := parsePath(from)
	if err != nil {
		c.log.Info("mail: bad address", "from", from, "error", err)
		return errBadSender
	}
	tx := policy.NewTransaction(c.pc, policy.NewID())
	tx.From = addr
	if opts != nil {
		tx.Params = policy.MailParams{
			Size: opts.Size, Body: string(opts.Body), SMTPUTF8: opts.UTF8, RequireTLS: opts.RequireTLS,
			Ret: string(opts.Return), EnvID: opts.EnvelopeID,
		}
		if opts.Auth != nil {
			tx.Params.Auth = *opts.Auth
			if tx.Params.Auth == "" {
				tx.Params.Auth = "<>"
			}
		}
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res := s.srv.cfg.Chain.EvalMail(ctx, tx)
	if logging(c.log) {
		c.log.LogAttrs(logCtx, slog.LevelInfo, "mail", slog.String("id", tx.ID), slog.String("from", addr.Path()), slog.String("verdict", res.Verdict.String()), ruleAttr(res))
	}
	if !res.Accepted() {
		return replyError(res.Reply)
	}
	s.tx, c.inTx = tx, true
	c.setReply(positiveLine(policy.StageMail, res.Reply, 250))
	return nil
}

// parsePath parses an address as go-smtp hands it over. go-smtp removes the
// quotes of a quoted local part, so when the plain parse fails the local
// part is quoted again and parsed once more.
func parsePath(p string) (policy.Address, error) {
	a, err := policy.ParseAddress(p)
	if err == nil {
		return a, nil
	}
	at := strings.LastIndexByte(p, '@')
	if at <= 0 {
		return a, err
	}
	local := p[:at]
	if strings.HasPrefix(local, `"`) {
		return a, err
	}
	// String quotes a local part that is not a dot-atom (a dot-atom
	// failed for another reason, which quoting would not cure).
	q := policy.Address{Local: local}.String() + p[at:]
	if a2, err2 := policy.ParseAddress(q); err2 == nil {
		return a2, nil
	}
	return a, err
}

func (s *session) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	c, tx := s.c, s.tx
	if c.dead() {
		return errNoConn
	}
	if tx == nil {
		return errNoTx
	}
	addr, err := parsePath(to)
	if err != nil {
		c.log.Info("rcpt: bad address", "id", tx.ID, "to", to, "error", err)
		return errBadRcpt
	}
	rcpt := policy.Recipient{Addr: addr}
	if opts != nil {
		for _, n := range opts.Notify {
			rcpt.Notify = append(rcpt.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			rcpt.ORCPT = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res := s.srv.cfg.Chain.EvalRcpt(ctx, tx, rcpt)
	if logging(c.log) {
		c.log.LogAttrs(logCtx, slog.LevelInfo, "rcpt", slog.String("id", tx.ID), slog.String("to", addr.Path()), slog.String("verdict", res.Verdict.String()), ruleAttr(res))
	}
	if !res.Accepted() {
		return replyError(res.Reply)
	}
	tx.Rcpts = append(tx.Rcpts, rcpt)
	c.setReply(positiveLine(policy.StageRcpt, res.Reply, 250, 251))
	return nil
}

func (s *session) Data(r io.Reader) error {
	c, tx := s.c, s.tx
	if c.dead() {
		return errNoConn
	}
	if tx == nil || len(tx.Rcpts) == 0 {
		return errNoTx
	}
	if !c.beginData() {
		return errShutdown
	}
	defer c.endData()
	if c.body {
		// DATA (not a BDAT chunk, which go-smtp hands over through a
		// pipe from a goroutine of its own, started after c.body was
		// last written): the body is read in bulk from the filter.
		br := newBodyReader(c)
		defer br.finish()
		r = br
	}
	ev := s.srv.cfg.Events
	if ev != nil {
		s.size = sizeReader{r: r}
		r = &s.size
	}
	reply, ok := s.srv.receive(c, s.gc.Conn(), tx, r)
	if ev != nil {
		ev.MessageReceived(s.lc.Name, reply.Code, s.size.n)
	}
	if !ok {
		return reply
	}
	c.resetErrors()
	return reply // a 250 carrying the queue ID
}

// AuthMechanisms lists PLAIN and LOGIN when AUTH is possible: on a TLS
// connection, or a submission listener that allows insecure AUTH. (go-smtp
// is told that AUTH is always allowed: it cannot see the TLS of
// STARTTLS, which is below it.)
func (s *session) AuthMechanisms() []string {
	if !s.authOffered() {
		return nil
	}
	return []string{"PLAIN", "LOGIN"}
}

func (s *session) authOffered() bool {
	return s.srv.cfg.Authenticator != nil &&
		(s.c.pc.TLS != nil || s.lc.Role == RoleSubmission && s.lc.AllowInsecureAuth)
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.c.needHelo {
		return nil, errNoHelo
	}
	if s.srv.cfg.Authenticator == nil {
		return nil, gosmtp.ErrAuthUnsupported
	}
	if !s.authOffered() {
		return nil, errAuthNeedsTLS
	}
	check := func(identity, user, pass string) error { return s.authenticate(mech, identity, user, pass) }
	switch strings.ToUpper(mech) {
	case "PLAIN":
		return s.srv.authEvents(&plainServer{check: check}, s.lc.Name), nil
	case "LOGIN":
		return s.srv.authEvents(&loginServer{check: check}, s.lc.Name), nil
	}
	return nil, gosmtp.ErrAuthUnknownMechanism
}

// authenticate verifies credentials, then runs the auth rules.
func (s *session) authenticate(mech, identity, user, pass string) error {
	c := s.c
	if c.dead() {
		return errNoConn
	}
	if hasCTL(user) || hasCTL(identity) {
		// The name becomes Conn.AuthUser, which rules and logs take as a
		// clean identity; an Authenticator that trims it would let
		// "alice\r\n..." through.
		c.log.Info("auth failed: control character in the identity", "mechanism", mech)
		return errAuthSyntax
	}
	if identity != "" && identity != user {
		c.log.Info("auth failed: authorization identity differs", "mechanism", mech, "user", user)
		return errAuthFailed
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.srv.cfg.Authenticator.Authenticate(ctx, c.ip, user, pass); err != nil {
		c.log.Info("auth failed", "mechanism", mech, "user", user, "error", err)
		if refusedCredentials(err) {
			return errAuthFailed
		}
		return errAuthTemp
	}
	res := s.srv.cfg.Chain.EvalAuth(ctx, c.pc, policy.AuthInfo{Mechanism: mech, Identity: user})
	if !res.Accepted() {
		c.log.Info("auth refused by rule", "mechanism", mech, "user", user, "rule", res.Rule, "reply", res.Reply.String())
		if res.Reply.Temporary() {
			return errAuthTemp
		}
		e := *errAuthFailed
		if t := sanitizeText(res.Reply.Text); t != "" {
			e.Message = t
		}
		return &e
	}
	c.pc.AuthUser, c.pc.AuthMechanism = user, mech
	c.log.Info("auth", "mechanism", mech, "user", user)
	c.setReply(positiveLine(policy.StageAuth, res.Reply, 235))
	return nil
}

// hasCTL reports whether s holds an ASCII control character.
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
