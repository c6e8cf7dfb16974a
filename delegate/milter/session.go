package milter

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/mtakit/mtakit/internal/xtext"
	"github.com/mtakit/mtakit/policy"
)

// macroMap holds the macros of a session; go-milter sends those its
// stages name (see macroStages) that are set.
type macroMap map[string]string

func (m macroMap) Get(name string) string { return m[name] }
func (m macroMap) GetEx(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// macroStages are the macros sent at each stage: Postfix's defaults
// (milter_*_macros) and the client's address, port and names at connect.
var macroStages = [...][]string{
	gomilter.StageConnect: {"j", "v", "_", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}", "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}"},
	gomilter.StageHelo:    {"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"},
	gomilter.StageMail:    {"i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"},
	gomilter.StageRcpt:    {"i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"},
	gomilter.StageData:    {"i"},
	gomilter.StageEOM:     {"i"},
	gomilter.StageEOH:     {"i"},
}

// bodyChunk is the size of the body packets: the protocol's smallest
// maximum, which every milter accepts.
const bodyChunk = 64 << 10

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, bodyChunk); return &b }}

// session is the milter connection of one SMTP session (or, at postq, of
// one message) and what it was told. Only the rule holding it (busy)
// uses its fields below timer.
type session struct {
	m     *Milter
	key   any
	conn  *policy.Conn
	busy  bool        // under m.mu
	timer *time.Timer // closes it when idle (Milter.expire)

	cs        *gomilter.ClientSession // nil: not connected
	nc        *guardConn              // written under dl (see cancelRule)
	macros    macroMap
	leadSpace bool // the milter wants header values with their leading space

	failed   error // the milter failed in this session: the default action from now on
	connDone bool  // the milter accepted the connection: nothing more to send
	helloed  bool
	heloSent string
	heloTLS  bool // the HELO sent came after STARTTLS (with the TLS macros)

	tx          *policy.Transaction // the transaction MAIL was sent for
	inTx        bool                // MAIL sent, message not ended: ABORT before the next
	txDone      bool                // the milter accepted or discarded tx: nothing more to send
	discard     bool                // ... discarded
	mailRefused *policy.Verdict     // the milter refused tx at MAIL
	rcpts       []policy.Address    // recipients of tx sent and not refused

	// The context of the rule running: one context.AfterFunc per rule
	// (not per command, which cost two allocations each) cuts the
	// command in progress short when it ends.
	dl       sync.Mutex
	rule     uint64 // the rule running (beginRule)
	ruleDone bool   // its context is done
}

// beginRule starts a rule with ctx: when ctx ends, the command in
// progress ends at once and the later ones fail. Call the returned
// function when the rule is over.
func (s *session) beginRule(ctx context.Context) (end func()) {
	s.dl.Lock()
	s.rule++
	s.ruleDone = ctx.Err() != nil
	gen := s.rule
	s.dl.Unlock()
	stop := context.AfterFunc(ctx, func() { s.cancelRule(gen) })
	return func() { stop() }
}

func (s *session) cancelRule(gen uint64) {
	s.dl.Lock()
	defer s.dl.Unlock()
	if s.rule != gen {
		return // a late call: its rule is over
	}
	s.ruleDone = true
	if s.nc != nil {
		s.nc.SetDeadline(time.Unix(1, 0))
	}
}

// setConn sets (or clears) the milter connection and its session.
func (s *session) setConn(nc *guardConn, cs *gomilter.ClientSession) {
	s.dl.Lock()
	s.nc, s.cs = nc, cs
	s.dl.Unlock()
}

// close sends QUIT and closes the connection.
func (s *session) close() {
	if s.cs != nil {
		s.cs.Close()
		s.setConn(nil, nil)
	}
}

// run runs fn unless the session's outcome is known already.
func (s *session) run(ctx context.Context, stage policy.Stage, fn func(*session) policy.Verdict) policy.Verdict {
	if s.failed != nil {
		return s.m.unavailable(ctx, stage, nil, s.failed, false)
	}
	if s.connDone {
		return policy.Next()
	}
	return fn(s)
}

// fail closes the connection after err and returns the default action;
// the later stages of the SMTP session get it too, without trying again
// (as Postfix does).
func (s *session) fail(ctx context.Context, stage policy.Stage, tx *policy.Transaction, err error) policy.Verdict {
	if s.nc != nil {
		s.nc.Close() // no QUIT: the connection is in an unknown state
	}
	s.setConn(nil, nil)
	s.failed = err
	return s.m.unavailable(ctx, stage, tx, err, true)
}

// op runs one exchange with the milter within timeout and ctx. A panic of
// go-milter is an error: it is a broken milter's doing.
func (s *session) op(ctx context.Context, timeout time.Duration, fn func() error) (err error) {
	dl := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(dl) {
		dl = cd
	}
	s.dl.Lock()
	done := s.ruleDone || ctx.Err() != nil
	if !done {
		s.nc.SetDeadline(dl)
	}
	s.dl.Unlock()
	if done {
		return fmt.Errorf("milter: %w", context.Cause(ctx))
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("milter: protocol error (go-milter panicked: %v)", p)
		}
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
	}()
	return fn()
}

// act runs one command that answers an action.
func (s *session) act(ctx context.Context, timeout time.Duration, fn func() (*gomilter.Action, error)) (*gomilter.Action, error) {
	var a *gomilter.Action
	err := s.op(ctx, timeout, func() error {
		var err error
		a, err = fn()
		return err
	})
	if err == nil && a == nil {
		err = errors.New("milter: no action")
	}
	return a, err
}

// open dials the milter, negotiates and sends the connection's facts.
func (s *session) open(ctx context.Context, c *policy.Conn) (*gomilter.Action, error) {
	o := &s.m.opts
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	var d net.Dialer
	raw, err := d.DialContext(dctx, s.m.addr.Network, s.m.addr.Address)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("milter: connect: %w", err)
	}
	s.setConn(&guardConn{Conn: raw}, nil)
	s.macros = macroMap{}
	s.connMacros(c)
	opts := []gomilter.Option{
		gomilter.WithDialer(dialed{s.nc}),
		gomilter.WithReadTimeout(0), gomilter.WithWriteTimeout(0), // see guardConn
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks),
		gomilter.WithMaximumVersion(gomilter.MaxClientProtocolVersion),
	}
	for st, names := range macroStages {
		opts = append(opts, gomilter.WithMacroRequest(gomilter.MacroStage(st), names))
	}
	client := gomilter.NewClient(s.m.addr.Network, s.m.addr.Address, opts...)
	var cs *gomilter.ClientSession
	err = s.op(ctx, o.CommandTimeout, func() error {
		var err error
		cs, err = client.Session(s.macros)
		return err
	})
	if err != nil {
		raw.Close()
		s.setConn(nil, nil)
		return nil, err
	}
	s.setConn(s.nc, cs)
	s.leadSpace = s.cs.ProtocolOption(gomilter.OptHeaderLeadingSpace)
	// The client's verified name, else its address in brackets (Postfix
	// turns its "unknown" into that Sendmail form), else "unknown".
	host, family, port, addr := "unknown", gomilter.FamilyUnknown, uint16(0), ""
	if c != nil {
		if ip := c.Remote.Addr().Unmap(); ip.IsValid() {
			family, port, addr = gomilter.FamilyInet, c.Remote.Port(), ip.String()
			if ip.Is6() {
				family = gomilter.FamilyInet6
			}
			host = "[" + addr + "]"
		}
		if c.ReverseName != "" {
			host = c.ReverseName
		}
	}
	return s.act(ctx, o.CommandTimeout, func() (*gomilter.Action, error) { return s.cs.Conn(host, family, port, addr) })
}

func (s *session) connMacros(c *policy.Conn) {
	o := &s.m.opts
	mm := s.macros
	mm["j"] = o.Hostname
	mm["v"] = "mtakit"
	mm["{daemon_name}"] = o.DaemonName
	mm["{client_name}"] = "unknown"
	if c == nil {
		return
	}
	if c.Local.IsValid() {
		mm["{daemon_addr}"] = c.Local.Addr().Unmap().String()
		mm["{if_addr}"] = mm["{daemon_addr}"]
		mm["{daemon_port}"] = strconv.Itoa(int(c.Local.Port()))
	}
	ip := "unknown"
	if c.Remote.IsValid() {
		ip = c.Remote.Addr().Unmap().String()
		mm["{client_addr}"] = ip
		mm["{client_port}"] = strconv.Itoa(int(c.Remote.Port()))
	}
	if c.ReverseName != "" {
		mm["{client_name}"] = c.ReverseName
		mm["{client_ptr}"] = c.ReverseName
	}
	mm["_"] = mm["{client_name}"] + " [" + ip + "]"
}

func (s *session) heloMacros(c *policy.Conn) {
	mm := s.macros
	for _, k := range macroStages[gomilter.StageHelo] {
		delete(mm, k)
	}
	if c == nil || c.TLS == nil {
		return
	}
	st := c.TLS
	mm["{tls_version}"] = strings.ReplaceAll(tls.VersionName(st.Version), " ", "v") // "TLSv1.3", as Postfix
	mm["{cipher}"] = tls.CipherSuiteName(st.CipherSuite)
	mm["{cipher_bits}"] = strconv.Itoa(cipherBits(st.CipherSuite))
	if len(st.PeerCertificates) > 0 {
		mm["{cert_subject}"] = st.PeerCertificates[0].Subject.String()
		mm["{cert_issuer}"] = st.PeerCertificates[0].Issuer.String()
	}
}

// cipherBits is the key size of a cipher suite, for {cipher_bits}.
func cipherBits(id uint16) int {
	n := tls.CipherSuiteName(id)
	switch {
	case strings.Contains(n, "AES_256"), strings.Contains(n, "CHACHA20"):
		return 256
	case strings.Contains(n, "AES_128"):
		return 128
	}
	return 0
}

func (s *session) mailMacros(tx *policy.Transaction) {
	mm := s.macros
	for _, k := range macroStages[gomilter.StageMail] {
		delete(mm, k)
	}
	mm["i"] = tx.ID
	if c := tx.Conn; c != nil && c.Authenticated() {
		mm["{auth_type}"] = c.AuthMechanism
		mm["{auth_authen}"] = c.AuthUser
	}
	if a := tx.Params.Auth; a != "" && a != "<>" {
		mm["{auth_author}"] = a
	}
	mm["{mail_addr}"] = tx.From.String()
	mm["{mail_host}"] = tx.From.Domain
	mm["{mail_mailer}"] = "smtp"
}

func (s *session) rcptMacros(r policy.Recipient) {
	mm := s.macros
	mm["{rcpt_addr}"] = r.Addr.String()
	mm["{rcpt_host}"] = r.Addr.Domain
	mm["{rcpt_mailer}"] = "smtp"
}

// reset closes the connection and forgets what it was told: the next
// stage starts a new one.
func (s *session) reset() {
	s.close()
	s.helloed, s.heloSent, s.heloTLS = false, "", false
	s.forgetTx()
}

func (s *session) forgetTx() {
	s.tx, s.inTx, s.txDone, s.discard, s.mailRefused, s.rcpts = nil, false, false, false, nil, nil
}

// abort ends the message in progress (SMFIC_ABORT), for the next MAIL.
func (s *session) abort(ctx context.Context) error {
	if !s.inTx || s.cs == nil {
		s.inTx = false
		return nil
	}
	s.inTx = false
	return s.op(ctx, s.m.opts.CommandTimeout, func() error { return s.cs.Abort(nil) })
}

// catchUp brings the milter up to the stage before the current one: it
// opens the connection and sends connect, HELO, and MAIL of tx, where
// not sent yet (a stage whose rules an earlier rule's Accept skipped, a
// connection closed when idle). decided is true when the milter decided
// on the way (v is then the verdict for the current stage) or failed.
func (s *session) catchUp(ctx context.Context, stage policy.Stage, c *policy.Conn, tx *policy.Transaction) (v policy.Verdict, decided bool) {
	o := &s.m.opts
	if s.cs == nil {
		s.reset()
		a, err := s.open(ctx, c)
		if err != nil {
			return s.fail(ctx, stage, tx, err), true
		}
		if v, done := s.connVerdict(ctx, policy.StageConnect, a); done {
			return v, true
		}
	}
	helo, overTLS := "", false
	if c != nil {
		helo, overTLS = c.Helo, c.TLS != nil
	}
	// HELO again for a new name, and after STARTTLS (the client's EHLO
	// then often repeats the name, but the TLS macros are new).
	if stage != policy.StageConnect && (helo != "" || tx != nil) && (!s.helloed || helo != "" && (helo != s.heloSent || overTLS != s.heloTLS)) {
		if helo == "" {
			helo = o.Hostname // no client (postq): our own name
		}
		if err := s.abort(ctx); err != nil {
			return s.fail(ctx, stage, tx, err), true
		}
		s.forgetTx()
		s.heloMacros(c)
		a, err := s.act(ctx, o.CommandTimeout, func() (*gomilter.Action, error) { return s.cs.Helo(helo) })
		if err != nil {
			return s.fail(ctx, stage, tx, err), true
		}
		s.helloed, s.heloSent, s.heloTLS = true, helo, overTLS
		if v, done := s.connVerdict(ctx, policy.StageHelo, a); done {
			return v, true
		}
	}
	if tx == nil || s.tx == tx {
		if s.tx != nil && s.mailRefused != nil {
			return *s.mailRefused, true
		}
		return policy.Next(), false
	}
	if err := s.abort(ctx); err != nil {
		return s.fail(ctx, stage, tx, err), true
	}
	s.forgetTx()
	s.tx = tx
	s.mailMacros(tx)
	a, err := s.act(ctx, o.CommandTimeout, func() (*gomilter.Action, error) {
		return s.cs.Mail(tx.From.String(), mailArgs(tx.Params))
	})
	if err != nil {
		return s.fail(ctx, stage, tx, err), true
	}
	s.inTx = true
	switch a.Type {
	case gomilter.ActionContinue:
		return policy.Next(), false
	case gomilter.ActionAccept:
		s.txDone = true
		return policy.Next(), false
	case gomilter.ActionDiscard:
		s.txDone, s.discard = true, true
		s.log(ctx, slog.LevelInfo, "milter discards the message (at MAIL)", tx)
		return policy.Next(), false
	}
	v = s.refusal(ctx, policy.StageMail, tx, a)
	s.mailRefused = &v
	if err := s.abort(ctx); err != nil {
		s.fail(ctx, stage, tx, err)
	}
	return v, true
}

// connVerdict applies the milter's answer to connect or HELO. done is
// true when it decided: v is then the verdict of the current stage.
func (s *session) connVerdict(ctx context.Context, stage policy.Stage, a *gomilter.Action) (v policy.Verdict, done bool) {
	switch a.Type {
	case gomilter.ActionContinue:
		return policy.Next(), false
	case gomilter.ActionAccept:
		s.connDone = true
		s.close()
		s.log(ctx, slog.LevelDebug, "milter accepts the connection: not consulted again in this session", nil)
		return policy.Next(), true
	}
	v = s.refusal(ctx, stage, nil, a)
	s.reset()
	return v, true
}

// refusal is the verdict of a reject or tempfail action.
func (s *session) refusal(ctx context.Context, stage policy.Stage, tx *policy.Transaction, a *gomilter.Action) policy.Verdict {
	r := replyOf(a)
	s.log(ctx, slog.LevelInfo, "milter refuses", tx, slog.String("stage", stage.String()), slog.String("reply", r.String()))
	return policy.Verdict{Kind: policy.KindDeny, Reply: r}
}

func (s *session) log(ctx context.Context, level slog.Level, msg string, tx *policy.Transaction, attrs ...slog.Attr) {
	l := s.m.log
	if !l.Enabled(ctx, level) {
		return
	}
	attrs = append(attrs, slog.String("milter", s.m.name))
	if tx != nil {
		attrs = append(attrs, slog.String("id", tx.ID))
	} else if s.conn != nil {
		attrs = append(attrs, slog.String("conn", s.conn.ID))
	}
	l.LogAttrs(ctx, level, msg, attrs...)
}

// replyOf maps a refusing action to our reply: the milter's own reply
// when it gave one, else 550 5.7.1 or 451 4.7.1.
func replyOf(a *gomilter.Action) policy.Reply {
	switch a.Type {
	case gomilter.ActionTempFail:
		return replyTempfail
	case gomilter.ActionRejectWithCode:
		if r, ok := parseReply(a.SMTPReply); ok {
			return r
		}
		if a.SMTPCode >= 400 && a.SMTPCode < 500 {
			return replyTempfail
		}
	}
	return replyReject
}

// parseReply reads an SMTP reply a milter gave ("550 5.7.1 Spam",
// possibly multi-line) as one line.
func parseReply(s string) (policy.Reply, bool) {
	var r policy.Reply
	var texts []string
	for i, line := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n") {
		if len(line) < 3 {
			return r, false
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 400 || code > 599 || (i > 0 && code != r.Code) {
			return r, false
		}
		r.Code = code
		rest := strings.TrimLeft(line[3:], " -")
		if enh, text, ok := strings.Cut(rest, " "); ok || rest != "" {
			if isEnhanced(enh, code) {
				if r.Enhanced == "" {
					r.Enhanced = enh
				}
				rest = text
			}
		}
		if rest = strings.TrimSpace(rest); rest != "" {
			texts = append(texts, rest)
		}
	}
	if r.Enhanced == "" {
		r.Enhanced = strconv.Itoa(r.Code/100) + ".7.1"
	}
	r.Text = strings.Join(texts, " ")
	if r.Text == "" {
		r.Text = "Command rejected"
		if r.Code < 500 {
			r.Text = "Service unavailable - try again later"
		}
	}
	return r, true
}

func isEnhanced(s string, code int) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return false
	}
	for _, p := range parts {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 || len(p) > 3 {
			return false
		}
	}
	return true
}

// mailArgs are the ESMTP parameters of MAIL FROM.
func mailArgs(p policy.MailParams) string {
	var a []string
	if p.Size > 0 {
		a = append(a, "SIZE="+strconv.FormatInt(p.Size, 10))
	}
	if p.Body != "" {
		a = append(a, "BODY="+p.Body)
	}
	if p.SMTPUTF8 {
		a = append(a, "SMTPUTF8")
	}
	if p.RequireTLS {
		a = append(a, "REQUIRETLS")
	}
	if p.Ret != "" {
		a = append(a, "RET="+p.Ret)
	}
	if p.EnvID != "" {
		a = append(a, "ENVID="+xtext.Encode(p.EnvID))
	}
	if p.Auth != "" {
		a = append(a, "AUTH="+xtext.Encode(p.Auth))
	}
	return strings.Join(a, " ")
}

// rcptArgs are the ESMTP parameters of RCPT TO.
func rcptArgs(r policy.Recipient) string {
	var a []string
	if len(r.Notify) > 0 {
		a = append(a, "NOTIFY="+strings.Join(r.Notify, ","))
	}
	if r.ORCPT != "" {
		a = append(a, "ORCPT="+xtext.Encode(r.ORCPT))
	}
	return strings.Join(a, " ")
}

// connect is the connect stage.
func (s *session) connect(ctx context.Context, c *policy.Conn) policy.Verdict {
	v, _ := s.catchUp(ctx, policy.StageConnect, c, nil)
	return v
}

// helo is the helo stage.
func (s *session) helo(ctx context.Context, c *policy.Conn) policy.Verdict {
	v, _ := s.catchUp(ctx, policy.StageHelo, c, nil)
	return v
}

// mail is the mail stage.
func (s *session) mail(ctx context.Context, tx *policy.Transaction) policy.Verdict {
	v, _ := s.catchUp(ctx, policy.StageMail, tx.Conn, tx)
	return v
}

// rcpt is the rcpt stage.
func (s *session) rcpt(ctx context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
	if v, decided := s.catchUp(ctx, policy.StageRcpt, tx.Conn, tx); decided {
		return v
	}
	if s.txDone {
		return policy.Next()
	}
	a, err := s.sendRcpt(ctx, r)
	if err != nil {
		return s.fail(ctx, policy.StageRcpt, tx, err)
	}
	switch a.Type {
	case gomilter.ActionContinue:
		s.rcpts = append(s.rcpts, r.Addr)
		return policy.Next()
	case gomilter.ActionAccept:
		s.rcpts = append(s.rcpts, r.Addr)
		s.txDone = true
		return policy.Next()
	case gomilter.ActionDiscard:
		s.txDone, s.discard = true, true
		s.log(ctx, slog.LevelInfo, "milter discards the message (at RCPT)", tx)
		return policy.Next()
	}
	return s.refusal(ctx, policy.StageRcpt, tx, a)
}

func (s *session) sendRcpt(ctx context.Context, r policy.Recipient) (*gomilter.Action, error) {
	s.rcptMacros(r)
	return s.act(ctx, s.m.opts.CommandTimeout, func() (*gomilter.Action, error) {
		return s.cs.Rcpt(r.Addr.String(), rcptArgs(r))
	})
}

// message is the preq stage: the message, then the verdict and the
// modifications of the end of message.
func (s *session) message(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
	o := &s.m.opts
	if v, decided := s.catchUp(ctx, policy.StagePreQ, tx.Conn, tx); decided {
		return v
	}
	// Recipients the milter has not seen (its rcpt rule was skipped, the
	// connection was reopened, a preq rule before this one added them).
	if !s.txDone {
		kept := tx.Rcpts[:0:0]
		changed := false
		for _, r := range tx.Rcpts {
			if containsAddr(s.rcpts, r.Addr) || s.txDone {
				kept = append(kept, r)
				continue
			}
			a, err := s.sendRcpt(ctx, r)
			if err != nil {
				return s.fail(ctx, policy.StagePreQ, tx, err)
			}
			switch a.Type {
			case gomilter.ActionContinue:
			case gomilter.ActionAccept:
				s.txDone = true
			case gomilter.ActionDiscard:
				s.txDone, s.discard = true, true
			default:
				// Too late to refuse one recipient: drop it.
				s.log(ctx, slog.LevelInfo, "milter refuses a recipient at the end of DATA: dropped", tx, slog.String("rcpt", r.Addr.Path()), slog.String("reply", replyOf(a).String()))
				changed = true
				continue
			}
			s.rcpts = append(s.rcpts, r.Addr)
			kept = append(kept, r)
		}
		if changed {
			if len(kept) == 0 {
				s.abort(ctx)
				return policy.Deny(replyReject.Code, replyReject.Enhanced, "Recipients rejected")
			}
			tx.Rcpts = kept
		}
	}
	if s.txDone {
		s.endTx(ctx)
		if s.discard {
			return s.discarded(ctx, tx)
		}
		return policy.Next()
	}

	s.macros["i"] = tx.ID
	a, err := s.act(ctx, o.CommandTimeout, s.cs.DataStart)
	if err != nil {
		return s.fail(ctx, policy.StagePreQ, tx, err)
	}
	if v, done := s.msgVerdict(ctx, tx, a); done {
		return v
	}
	fields := m.Header.Fields()
	hidden := ourTrace(fields, tx)
	for _, f := range fields[hidden:] {
		name, value := s.fieldValue(f)
		a, err := s.act(ctx, o.CommandTimeout, func() (*gomilter.Action, error) { return s.cs.HeaderField(name, value, nil) })
		if err != nil {
			return s.fail(ctx, policy.StagePreQ, tx, err)
		}
		if v, done := s.msgVerdict(ctx, tx, a); done {
			return v
		}
		if s.cs.Skip() {
			break
		}
	}
	a, err = s.act(ctx, o.CommandTimeout, s.cs.HeaderEnd)
	if err != nil {
		return s.fail(ctx, policy.StagePreQ, tx, err)
	}
	if v, done := s.msgVerdict(ctx, tx, a); done {
		return v
	}
	if v, done, err := s.body(ctx, tx, m); err != nil {
		return s.fail(ctx, policy.StagePreQ, tx, err)
	} else if done {
		return v
	}
	var mods []gomilter.ModifyAction
	err = s.op(ctx, o.EOMTimeout, func() error {
		var err error
		mods, a, err = s.cs.End()
		if err == nil && a == nil {
			err = errors.New("milter: no action")
		}
		return err
	})
	if err != nil {
		return s.fail(ctx, policy.StagePreQ, tx, err)
	}
	s.inTx = false // End leaves the milter ready for the next MAIL
	switch a.Type {
	case gomilter.ActionContinue, gomilter.ActionAccept:
	case gomilter.ActionDiscard:
		return s.discarded(ctx, tx)
	default:
		return s.refusal(ctx, policy.StagePreQ, tx, a)
	}
	q, err := s.apply(ctx, tx, m, mods, hidden)
	if err != nil {
		// Ours (a temporary file): never a 250 for a message the
		// milter changed and we could not.
		return policy.Fail(fmt.Errorf("milter %s: applying its modifications: %w", s.m.name, err))
	}
	if len(tx.Rcpts) == 0 {
		s.log(ctx, slog.LevelInfo, "milter removed every recipient: message discarded", tx)
		return s.discarded(ctx, tx)
	}
	if q != "" {
		return policy.Quarantine(q)
	}
	return policy.Next()
}

func (s *session) body(ctx context.Context, tx *policy.Transaction, m *policy.Message) (policy.Verdict, bool, error) {
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := *bp
	r := m.Body()
	sent := false
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 || !sent && rerr != nil {
			// An empty body still gets one (empty) chunk: go-milter ends
			// a message only after a chunk.
			sent = true
			chunk := buf[:n]
			a, err := s.act(ctx, s.m.opts.CommandTimeout, func() (*gomilter.Action, error) { return s.cs.BodyChunk(chunk) })
			if err != nil {
				return policy.Verdict{}, false, err
			}
			if v, done := s.msgVerdict(ctx, tx, a); done {
				return v, true, nil
			}
			if s.cs.Skip() {
				return policy.Verdict{}, false, nil
			}
		}
		switch rerr {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return policy.Verdict{}, false, nil
		default:
			return policy.Fail(fmt.Errorf("milter %s: reading the message: %w", s.m.name, rerr)), true, nil
		}
	}
}

// msgVerdict applies an answer given before the end of the message.
func (s *session) msgVerdict(ctx context.Context, tx *policy.Transaction, a *gomilter.Action) (policy.Verdict, bool) {
	switch a.Type {
	case gomilter.ActionContinue:
		return policy.Next(), false
	case gomilter.ActionAccept:
		s.endTx(ctx)
		return policy.Next(), true
	case gomilter.ActionDiscard:
		s.endTx(ctx)
		return s.discarded(ctx, tx), true
	}
	s.endTx(ctx)
	return s.refusal(ctx, policy.StagePreQ, tx, a), true
}

// endTx ends the message in the milter before its end (ABORT).
func (s *session) endTx(ctx context.Context) {
	if err := s.abort(ctx); err != nil {
		s.close()
	}
}

// discarded is the verdict of a discarded message: accepted, marked to
// be dropped at delivery (DiscardRule), no later rule.
func (s *session) discarded(ctx context.Context, tx *policy.Transaction) policy.Verdict {
	DiscardedKey.Set(tx, s.m.name)
	s.log(ctx, slog.LevelInfo, "milter discards the message: accepted and dropped", tx)
	return policy.ForceAccept()
}

// fieldValue is a header field as the milter wants it: its name, and its
// value with LF line ends (as Postfix and Sendmail send them), without
// the space after the colon unless the milter asked for it.
func (s *session) fieldValue(f policy.Field) (string, string) {
	raw := string(f.Raw)
	i := strings.IndexByte(raw, ':')
	if i < 0 {
		return "", ""
	}
	name := strings.TrimRight(raw[:i], " \t")
	v := strings.TrimRight(raw[i+1:], "\r\n")
	v = strings.ReplaceAll(v, "\r\n", "\n")
	if !s.leadSpace {
		v = strings.TrimPrefix(v, " ")
	}
	return name, v
}

// ourTrace returns how many fields at the top of the header are this
// hop's trace fields, which the milter is not shown: those above our
// Received field (Received-SPF, fields rules added) and the Received field
// itself, recognised by the queue ID. Postfix and Sendmail hide their own
// Received field too: a milter that signs (OpenDKIM) or rebuilds a
// Received field from the macros (spamass-milter) expects the header as
// the client sent it. 0 when there is no such field (at postq).
func ourTrace(fields []policy.Field, tx *policy.Transaction) int {
	if tx.ID == "" {
		return 0
	}
	id := " id " + tx.ID
	for i, f := range fields {
		if !strings.EqualFold(f.Name(), "Received") {
			continue
		}
		if v := f.Value(); strings.Contains(v, id+" ") || strings.Contains(v, id+";") {
			return i + 1
		}
		return 0 // the first Received is not ours
	}
	return 0
}

func containsAddr(list []policy.Address, a policy.Address) bool {
	for _, b := range list {
		if b.Equal(a) {
			return true
		}
	}
	return false
}
