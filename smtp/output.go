package smtp

import (
	"bytes"
	"net"
	"strconv"

	"github.com/mtakit/mtakit/policy"
)

// What go-smtp writes. go-smtp writes its own fixed positive replies to
// MAIL ("250 2.0.0 Roger, ..."), RCPT, AUTH, HELO/EHLO and the greeting,
// and a session cannot change them: an error returned from Mail or Rcpt,
// even a 2xx one, is sent but leaves the command undone. So the session
// accepts the command and sets the reply it wants (the chain's
// Result.Reply, sanitized) on the conn, and Write sends it instead of
// go-smtp's one-line 2xx. go-smtp flushes each reply line in a Write of
// its own, so Write sees whole lines.

// wire is where the bytes go: the TLS of STARTTLS once it is made, the
// connection itself before (and always on an implicit TLS listener, whose
// TLS is the connection).
func (c *conn) wire() net.Conn {
	if c.tc != nil {
		return c.tc
	}
	return c.Conn
}

// setReply makes line (one complete reply line, CRLF included) the reply
// sent instead of go-smtp's next one.
func (c *conn) setReply(line []byte) {
	c.mu.Lock()
	c.replace = line
	c.mu.Unlock()
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	out := c.rewrite(p)
	c.mu.Unlock()
	n, err := c.wire().Write(out)
	if err == nil {
		n = len(p)
	} else {
		n = min(n, len(p))
	}
	c.mu.Lock()
	closeNow := c.closeAfter
	if err == nil && c.scan(out) {
		closeNow = true
	}
	c.mu.Unlock()
	if closeNow {
		c.Close()
	}
	return n, err
}

// rewrite returns what to write for p, a reply line of go-smtp's. Called
// with c.mu held.
func (c *conn) rewrite(p []byte) []byte {
	if r := c.replace; r != nil {
		c.replace = nil
		if len(p) > 0 && p[0] == '2' {
			return r
		}
		// go-smtp refused the command after all (it cannot, once the
		// session accepted it, but never send a 2xx for a refusal).
	}
	switch {
	case bytes.HasPrefix(p, []byte("250-Hello ")):
		c.esmtp = true // EHLO: "250-Hello name", then the extensions
		first := p
		if c.helloText != nil {
			first = c.hello('-')
		}
		if c.offerTLS() {
			return append(append([]byte(nil), first...), "250-STARTTLS\r\n"...)
		}
		return first
	case bytes.HasPrefix(p, []byte("250 2.0.0 Hello ")):
		c.esmtp = false // HELO: one line "250 2.0.0 Hello name"
		if c.helloText != nil {
			return c.hello(' ')
		}
	case !c.greeted && c.greetText != nil && bytes.HasPrefix(p, []byte("220 ")):
		return c.greetText
	}
	return p
}

// hello is the first line of the reply to HELO/EHLO with a helo rule's
// text: "250" sep our name and the text (RFC 5321 section 4.1.1.1).
func (c *conn) hello(sep byte) []byte {
	b := make([]byte, 0, 8+len(c.srv.cfg.Hostname)+len(c.helloText))
	b = append(b, '2', '5', '0', sep)
	b = append(b, c.srv.cfg.Hostname...)
	b = append(b, ' ')
	b = append(b, c.helloText...)
	return append(b, '\r', '\n')
}

// offerTLS reports whether EHLO lists STARTTLS. Called with c.mu held.
func (c *conn) offerTLS() bool {
	return c.srv != nil && c.srv.tls != nil && c.pc != nil && c.pc.TLS == nil
}

// replyText is r's text made one safe line; def when it is empty.
func replyText(r policy.Reply, def string) string {
	if t := sanitizeText(r.Text); t != "" {
		return t
	}
	return def
}

// positiveLine formats the positive reply of stage st from the chain's
// Result.Reply r: its code when it is one of codes, else the first; its
// enhanced code when it is well formed and of the code's class, else the
// stage's default one; its text, sanitized. The stage's default reply is
// formatted once (most replies are).
func positiveLine(st policy.Stage, r policy.Reply, codes ...int) []byte {
	def := policy.DefaultReply(st)
	if r == def {
		return defaultLines[st]
	}
	return formatPositive(def, r, codes...)
}

func formatPositive(def, r policy.Reply, codes ...int) []byte {
	code := codes[0]
	for _, c := range codes {
		if r.Code == c {
			code = c
		}
	}
	enh := def.Enhanced
	// parseEnhanced gives X.0.0 for a malformed code: tell that from a
	// rule's own X.0.0.
	if ec := parseEnhanced(r.Enhanced, code); ec != parseEnhanced("", code) || r.Enhanced == strconv.Itoa(code/100)+".0.0" {
		enh = strconv.Itoa(ec[0]) + "." + strconv.Itoa(ec[1]) + "." + strconv.Itoa(ec[2])
	}
	b := strconv.AppendInt(nil, int64(code), 10)
	b = append(b, ' ')
	if enh != "" {
		b = append(b, enh...)
		b = append(b, ' ')
	}
	b = append(b, replyText(r, def.Text)...)
	return append(b, '\r', '\n')
}

// defaultLines are the default positive replies of the stages whose reply
// the server sends from the chain, formatted once; never modified.
var defaultLines = func() map[policy.Stage][]byte {
	m := map[policy.Stage][]byte{}
	for _, st := range []policy.Stage{policy.StageAuth, policy.StageMail, policy.StageRcpt} {
		d := policy.DefaultReply(st)
		m[st] = formatPositive(d, d, d.Code)
	}
	return m
}()
