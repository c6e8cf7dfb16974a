package auth

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// ErrReceivedSPFSyntax is wrapped by the errors of ParseReceivedSPF.
var ErrReceivedSPFSyntax = errors.New("auth: bad Received-SPF field")

// maxReceivedSPF bounds the field value ParseReceivedSPF reads.
const maxReceivedSPF = 16 << 10

// ParseReceivedSPF parses the value of a Received-SPF field (RFC 7208
// section 9.1): a result, an optional comment, and key=value pairs
// separated by ";" whose values are dot-atoms or quoted-strings. Keys are
// case-insensitive; unknown keys are ignored, and so are client-ip values
// that are not addresses. Folding (CRLF followed by white space) is
// allowed anywhere white space is.
//
// Domain is filled from the identity: the HELO name for "helo", otherwise
// the domain of envelope-from (the HELO name when envelope-from is empty
// or has no "@"). Identity defaults to "mailfrom".
func ParseReceivedSPF(value string) (SPFResult, error) {
	if len(value) > maxReceivedSPF {
		return SPFResult{}, fmt.Errorf("%w: too long", ErrReceivedSPFSyntax)
	}
	p := &rsParser{s: value}
	p.skipCFWS()
	result := strings.ToLower(p.token())
	if !SPFStatus(result).valid() {
		return SPFResult{}, fmt.Errorf("%w: unknown result %q", ErrReceivedSPFSyntax, result)
	}
	r := SPFResult{Result: SPFStatus(result)}
	for {
		if p.err != nil {
			return SPFResult{}, p.err
		}
		p.skipCFWS()
		if p.err != nil {
			return SPFResult{}, p.err
		}
		if p.eof() {
			break
		}
		if p.peek() == ';' {
			p.i++
			continue
		}
		key := strings.ToLower(p.token())
		if key == "" {
			return SPFResult{}, fmt.Errorf("%w: unexpected %q at %d", ErrReceivedSPFSyntax, p.peek(), p.i)
		}
		p.skipCFWS()
		if p.eof() || p.peek() != '=' {
			return SPFResult{}, fmt.Errorf("%w: key %q without value", ErrReceivedSPFSyntax, key)
		}
		p.i++
		p.skipCFWS()
		val := p.value()
		if p.err != nil {
			return SPFResult{}, p.err
		}
		switch key {
		case "client-ip":
			if ip, err := netip.ParseAddr(val); err == nil {
				r.ClientIP = ip
			}
		case "envelope-from":
			r.Sender = val
		case "helo":
			r.Helo = val
		case "receiver":
			r.Receiver = val
		case "identity":
			r.Identity = strings.ToLower(val)
		case "problem":
			r.Problem = val
		}
	}
	if r.Identity == "" {
		r.Identity = "mailfrom"
	}
	dom := r.Helo
	if r.Identity != "helo" {
		if d, ok := senderDomain(r.Sender); ok {
			dom = d
		}
	}
	if d, err := policy.NormalizeDomain(dom); err == nil {
		dom = d
	} else {
		dom = strings.ToLower(dom)
	}
	r.Domain = dom
	return r, nil
}

// senderDomain returns the part after the last "@" of an envelope-from
// value, written bare or in angle brackets (<a@b.example>).
func senderDomain(sender string) (string, bool) {
	sender = strings.Trim(strings.TrimSpace(sender), "<>")
	at := strings.LastIndexByte(sender, '@')
	if at < 0 {
		return "", false
	}
	return sender[at+1:], true
}

// SPFResultFromHeader returns the SPF result recorded in the topmost
// Received-SPF field of h, provided its receiver= is receiver (compared
// case-insensitively); rules that run after queueing (DMARC at postq)
// read the result of CheckSPF this way, since rule values do not survive
// a restart. Only the topmost field is considered: a field further down
// came from elsewhere. With CheckSPF skipped (authenticated sessions) the
// topmost field may be the sender's; pass the receiver name CheckSPF used
// so that a field naming another host is refused.
func SPFResultFromHeader(h *policy.Header, receiver string) (SPFResult, bool) {
	for _, f := range h.Fields() {
		if !strings.EqualFold(f.Name(), "Received-SPF") {
			continue
		}
		r, err := ParseReceivedSPF(f.Value())
		if err != nil || !strings.EqualFold(r.Receiver, receiver) {
			return SPFResult{}, false
		}
		return r, true
	}
	return SPFResult{}, false
}

type rsParser struct {
	s   string
	i   int
	err error
}

func (p *rsParser) eof() bool  { return p.i >= len(p.s) }
func (p *rsParser) peek() byte { return p.s[p.i] }

// skipCFWS skips white space, folding and comments (nested, with quoted
// pairs).
func (p *rsParser) skipCFWS() {
	for !p.eof() {
		switch c := p.peek(); c {
		case ' ', '\t', '\r', '\n':
			p.i++
		case '(':
			depth := 0
			for !p.eof() {
				c := p.peek()
				p.i++
				switch c {
				case '\\':
					if !p.eof() {
						p.i++
					}
				case '(':
					depth++
				case ')':
					depth--
				}
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				p.err = fmt.Errorf("%w: unterminated comment", ErrReceivedSPFSyntax)
				return
			}
		default:
			return
		}
	}
}

// token reads a key or the result: letters, digits, "-" and "_".
func (p *rsParser) token() string {
	start := p.i
	for !p.eof() {
		c := p.peek()
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			p.i++
			continue
		}
		break
	}
	return p.s[start:p.i]
}

// value reads a quoted-string (unquoted) or a bare value up to white
// space, ";" or "(".
func (p *rsParser) value() string {
	if p.eof() {
		return ""
	}
	if p.peek() == '"' {
		p.i++
		var b strings.Builder
		for !p.eof() {
			c := p.peek()
			p.i++
			switch c {
			case '\\':
				if p.eof() {
					p.err = fmt.Errorf("%w: dangling backslash", ErrReceivedSPFSyntax)
					return ""
				}
				b.WriteByte(p.peek())
				p.i++
			case '"':
				return b.String()
			case '\r', '\n':
				// folding inside a quoted-string
			default:
				b.WriteByte(c)
			}
		}
		p.err = fmt.Errorf("%w: unterminated quoted-string", ErrReceivedSPFSyntax)
		return ""
	}
	start := p.i
	for !p.eof() {
		c := p.peek()
		if c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';' || c == '(' || c == '"' {
			break
		}
		p.i++
	}
	return p.s[start:p.i]
}
