package auth

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
)

// Authentication-Results (RFC 8601) plumbing shared by the DKIM and DMARC
// rules.
//
// Each rule adds its own Authentication-Results field at the top of the
// header, under the authserv-id of this server (its host name by default);
// RFC 8601 section 4 allows several fields with the same authserv-id, and
// readers such as MUAs and DMARC reporters merge them.
//
// Before trusting or adding results, the rules remove Authentication-Results
// fields that claim our authserv-id but were not written by us (RFC 8601
// section 5): a sender could otherwise forge "dkim=pass" in our name. A field
// with our authserv-id counts as ours, and is kept, when
//
//   - it is above the first Received field of the message (the smtp package
//     prepends our Received field and the fields rules added before DATA, so
//     everything a client sent is below it), or
//   - its bytes equal a field in tx.Header (added by a rule before DATA), or
//   - a rule of this package added it during this transaction.
//
// Every other field with our authserv-id is removed. A message with no
// Received field at all is treated as entirely foreign.

// AuthResultsField is the name of the Authentication-Results header field.
const AuthResultsField = "Authentication-Results"

// DefaultAuthServID returns the authserv-id used when an option leaves it
// empty: the host name of this machine, or "localhost" when it is unknown.
func DefaultAuthServID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return strings.ToLower(h)
}

// FormatAuthResults returns the value of an Authentication-Results field for
// authservID and results (go-msgauth's authres.Format), without the field
// name. No results give "<id>; none".
func FormatAuthResults(authservID string, results ...authres.Result) string {
	return authres.Format(authservID, results)
}

// AddAuthResults adds an Authentication-Results field with results at the top
// of h, folded between result clauses and parameters so lines stay short.
func AddAuthResults(h *policy.Header, authservID string, results ...authres.Result) {
	h.AddRaw(arFold(AuthResultsField, FormatAuthResults(authservID, results...)))
}

// StripAuthResults removes every Authentication-Results field of h whose
// authserv-id is authservID (compared case-insensitively) and returns how
// many it removed. Use it before any rule writes results, for example as
// the first preq rule; the rules of this package use a finer test that
// keeps the fields this server wrote (see the package's Authentication-Results
// notes).
func StripAuthResults(h *policy.Header, authservID string) int {
	return h.DelFunc(func(f policy.Field) bool {
		return strings.EqualFold(f.Name(), AuthResultsField) && strings.EqualFold(AuthServIDOf(f.Value()), authservID)
	})
}

// AuthServIDOf returns the authserv-id of an Authentication-Results value:
// the first token or quoted string, after any comments. It returns "" when
// the value does not start with one.
func AuthServIDOf(v string) string {
	i := arSkipCFWS(v, 0)
	id, _ := arReadValue(v, i)
	return id
}

// ParseAuthResults parses an Authentication-Results value into its
// authserv-id and results. Comments are removed, and quoted values are
// unquoted and may hold ";" and white space (RFC 8601 section 2.2), both of
// which go-msgauth's own parser splits at: a quoted HELO name holding
// ";dkim=pass header.d=..." stays one value here. Unknown methods come back
// as *authres.GenericResult. A clause without "method=result" is an error;
// the results before it are returned with it.
func ParseAuthResults(v string) (authservID string, results []authres.Result, err error) {
	clauses := arSplit(arStripComments(v), func(c byte) bool { return c == ';' })
	if len(clauses) == 0 {
		return "", nil, nil
	}
	head := arSplit(clauses[0], arIsWSP)
	if len(head) > 0 {
		authservID = arUnquote(head[0])
	}
	if len(head) > 1 && (len(head) > 2 || head[1] != "1") {
		return "", nil, errors.New("auth: Authentication-Results: unsupported version")
	}
	for _, clause := range clauses[1:] {
		words := arSplit(clause, arIsWSP)
		if len(words) == 0 || words[0] == "none" {
			continue
		}
		method, value, ok := strings.Cut(words[0], "=")
		if !ok {
			return authservID, results, errors.New("auth: Authentication-Results: malformed method and result")
		}
		params := make(map[string]string, len(words)-1)
		for _, w := range words[1:] {
			k, pv, ok := strings.Cut(w, "=")
			if !ok {
				continue
			}
			params[strings.ToLower(k)] = arUnquote(pv)
		}
		r, err := arResult(strings.ToLower(method), authres.ResultValue(strings.ToLower(arUnquote(value))), params)
		if err != nil {
			return authservID, results, err
		}
		results = append(results, r)
	}
	return authservID, results, nil
}

// arSafe makes a value safe for go-msgauth's formatter, which quotes a
// value by escaping its double quotes but not its backslashes: a value
// ending in a backslash would leave the quoted-string open and swallow
// the rest of the field. Double quotes become single ones, backslashes
// slashes, control characters spaces.
func arSafe(v string) string {
	if !strings.ContainsAny(v, "\"\\") && !arHasCTL(v) {
		return v
	}
	b := []byte(v)
	for i, c := range b {
		switch {
		case c == '"':
			b[i] = '\''
		case c == '\\':
			b[i] = '/'
		case c < 0x20 || c == 0x7f:
			b[i] = ' '
		}
	}
	return string(b)
}

func arHasCTL(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return true
		}
	}
	return false
}

func arIsWSP(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// arSplit splits s at the bytes sep matches outside quoted strings and
// drops empty parts (after trimming white space).
func arSplit(s string, sep func(byte) bool) []string {
	var out []string
	start, inQuote := 0, false
	add := func(part string) {
		if part = strings.Trim(part, " \t\r\n"); part != "" {
			out = append(out, part)
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && sep(c):
			add(s[start:i])
			start = i + 1
		}
	}
	add(s[start:])
	return out
}

// arUnquote returns the content of a quoted-string, or s when it is not
// one.
func arUnquote(s string) string {
	if len(s) < 2 || s[0] != '"' {
		return s
	}
	if v, n := arReadValue(s, 0); n == len(s) {
		return v
	}
	return s
}

// arResult builds the typed result of method, as go-msgauth's parser does.
func arResult(method string, value authres.ResultValue, p map[string]string) (authres.Result, error) {
	switch method {
	case "auth":
		return &authres.AuthResult{Value: value, Reason: p["reason"], Auth: p["smtp.auth"]}, nil
	case "dkim":
		return &authres.DKIMResult{Value: value, Reason: p["reason"], Domain: p["header.d"], Identifier: p["header.i"]}, nil
	case "domainkeys":
		return &authres.DomainKeysResult{Value: value, Reason: p["reason"], Domain: p["header.d"],
			From: p["header.from"], Sender: p["header.sender"]}, nil
	case "iprev":
		return &authres.IPRevResult{Value: value, Reason: p["reason"], IP: p["policy.iprev"]}, nil
	case "sender-id":
		r := &authres.SenderIDResult{Value: value, Reason: p["reason"]}
		for k, v := range p {
			if h, ok := strings.CutPrefix(k, "header."); ok {
				r.HeaderKey, r.HeaderValue = h, v
				break
			}
		}
		return r, nil
	case "spf":
		return &authres.SPFResult{Value: value, Reason: p["reason"], From: p["smtp.mailfrom"], Helo: p["smtp.helo"]}, nil
	case "dmarc":
		return &authres.DMARCResult{Value: value, Reason: p["reason"], From: p["header.from"]}, nil
	case "arc":
		r := &authres.ARCResult{Value: value, RemoteIP: p["smtp.remote-ip"]}
		if s, ok := p["header.oldest-pass"]; ok {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("auth: Authentication-Results: invalid header.oldest-pass %q", s)
			}
			r.OldestPass = n
		}
		return r, nil
	}
	return &authres.GenericResult{Method: method, Value: value, Params: p}, nil
}

// arAddedKey remembers the fields this package added during a transaction,
// so a later rule does not take them for forgeries, even after queueing
// (the fields are kept as JSON, base64 each).
const arAddedKey policy.Key[[][]byte] = "auth.authres-added"

// arAdd adds an Authentication-Results field to m's header and remembers it
// as ours for the rest of the transaction.
func arAdd(tx *policy.Transaction, h *policy.Header, authservID string, results ...authres.Result) {
	arAddValue(tx, h, FormatAuthResults(authservID, results...))
}

// arAddValue adds an Authentication-Results field with value (authserv-id
// and results, formatted) to h and remembers it as ours for the rest of the
// transaction.
func arAddValue(tx *policy.Transaction, h *policy.Header, value string) {
	raw := arFold(AuthResultsField, value)
	h.AddRaw(raw)
	if tx != nil {
		prev, _ := arAddedKey.Get(tx)
		arAddedKey.Set(tx, append(prev, raw))
	}
}

// arTrusted returns a function telling whether the field at index i of h was
// written at our hop (see the package notes above).
func arTrusted(tx *policy.Transaction, h *policy.Header) func(i int, f policy.Field) bool {
	firstReceived := -1
	for i, f := range h.Fields() {
		if arNameIs(f.Raw, "Received") {
			firstReceived = i
			break
		}
	}
	var known [][]byte
	if tx != nil {
		for _, f := range tx.Header.Fields() {
			known = append(known, f.Raw)
		}
		added, _ := arAddedKey.Get(tx)
		known = append(known, added...)
	}
	return func(i int, f policy.Field) bool {
		if firstReceived >= 0 && i < firstReceived {
			return true
		}
		for _, k := range known {
			if bytes.Equal(k, f.Raw) {
				return true
			}
		}
		return false
	}
}

// arStripForged removes the Authentication-Results fields of h that claim
// authservID and were not written at our hop. It returns how many it
// removed.
func arStripForged(tx *policy.Transaction, h *policy.Header, authservID string) int {
	trusted := arTrusted(tx, h)
	i := -1
	return h.DelFunc(func(f policy.Field) bool {
		i++
		if !arNameIs(f.Raw, AuthResultsField) {
			return false
		}
		if !strings.EqualFold(AuthServIDOf(f.Value()), authservID) {
			return false
		}
		return !trusted(i, f)
	})
}

// arNameIs reports whether strings.EqualFold(policy.Field{Raw:
// raw}.Name(), name), without making the name a string.
func arNameIs(raw []byte, name string) bool {
	i := bytes.IndexByte(raw, ':')
	if i < 0 {
		return name == ""
	}
	return bytes.EqualFold(bytes.TrimRight(raw[:i], " \t"), []byte(name))
}

// arIsSpecial reports whether c is a MIME tspecial (RFC 2045), which ends a
// token.
func arIsSpecial(c byte) bool {
	return strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0
}

// arSkipCFWS skips white space, line breaks and (nested) comments from
// s[i:] and returns the index of the next other byte.
func arSkipCFWS(s string, i int) int {
	depth := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\\' && depth > 0:
			i += 2
			continue
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		default:
			return i
		}
		i++
	}
	return len(s)
}

// arReadValue reads a token or quoted-string at s[i:] and returns it
// (unquoted) with the index after it; ("", i) when there is none.
func arReadValue(s string, i int) (string, int) {
	if i >= len(s) {
		return "", i
	}
	if s[i] == '"' {
		var b strings.Builder
		for j := i + 1; j < len(s); j++ {
			switch s[j] {
			case '\\':
				if j+1 < len(s) {
					j++
					b.WriteByte(s[j])
				}
			case '"':
				return b.String(), j + 1
			default:
				b.WriteByte(s[j])
			}
		}
		return "", i // unterminated
	}
	j := i
	for j < len(s) && s[j] > ' ' && s[j] < 0x7f && !arIsSpecial(s[j]) {
		j++
	}
	return s[i:j], j
}

// arStripComments removes comments (outside quoted strings) from a
// structured field value, replacing each with a space.
func arStripComments(s string) string {
	var b strings.Builder
	depth, inQuote := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			} else if c == '"' {
				inQuote = false
			}
		case depth > 0:
			switch c {
			case '\\':
				i++
			case '(':
				depth++
			case ')':
				depth--
				if depth == 0 {
					b.WriteByte(' ')
				}
			}
		case c == '(':
			depth++
		case c == '"':
			inQuote = true
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

var arCRLFToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// arFold formats "Name: value\r\n", breaking lines at white space outside
// quoted strings and comments so that they stay under 78 characters where
// possible; a break before each result clause after the first keeps
// fields readable. CR and LF in value become spaces.
func arFold(name, value string) []byte {
	// Byte-wise: strings.Map would turn invalid UTF-8 into U+FFFD.
	value = arCRLFToSpace.Replace(value)
	// Split into words at spaces outside quotes and comments. A word is
	// the run of bytes between two such spaces, quotes, comments and
	// escapes included, so it is a substring of value.
	var wordsArr [32]string
	words := wordsArr[:0]
	depth, inQuote := 0, false
	start := 0
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case inQuote:
			if c == '\\' && i+1 < len(value) {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case c == '"':
			inQuote = true
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == '\\' && depth > 0 && i+1 < len(value):
			i++
		case (c == ' ' || c == '\t') && depth == 0:
			if i > start {
				words = append(words, value[start:i])
			}
			start = i + 1
		}
	}
	if len(value) > start {
		words = append(words, value[start:])
	}

	b := make([]byte, 0, len(name)+len(value)+3*len(words)+3)
	b = append(b, name...)
	b = append(b, ':')
	lineLen := len(name) + 1
	for i, w := range words {
		clauseStart := i > 1 && strings.HasSuffix(words[i-1], ";")
		if i > 0 && (lineLen+1+len(w) > 78 || clauseStart) {
			b = append(b, "\r\n "...)
			lineLen = 1
		} else {
			b = append(b, ' ')
			lineLen++
		}
		b = append(b, w...)
		lineLen += len(w)
	}
	return append(b, '\r', '\n')
}
