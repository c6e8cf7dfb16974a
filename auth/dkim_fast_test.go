package auth

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
)

// The verifier's hot path replaced a regular expression, a strings.Map, a
// strings.Split, a line-by-line copy and base64 of a stripped copy, and the
// Authentication-Results folding a strings.Builder per word, with byte
// loops that skip the work when there is none. The fuzz targets below hold
// each equal to the code it replaced, kept here as the reference.

// refSigValueRE is go-msgauth's expression for the b= value.
var refSigValueRE = regexp.MustCompile(`(b\s*=)[^;]+`)

func refCRLFLines(raw []byte) string {
	lines := strings.SplitAfter(string(raw), "\n")
	var b strings.Builder
	for _, l := range lines {
		if l == "" {
			continue
		}
		l = strings.TrimSuffix(l, "\n")
		l = strings.TrimSuffix(l, "\r")
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	return b.String()
}

func refStripWS(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

func refParseDKIMTags(s string) (map[string]string, error) {
	tags := map[string]string{}
	for _, spec := range strings.Split(s, ";") {
		if strings.Trim(spec, " \t\r\n") == "" {
			continue
		}
		name, value, ok := strings.Cut(spec, "=")
		if !ok {
			return tags, fmt.Errorf("auth: DKIM tag-spec %q without '='", spec)
		}
		name = strings.Trim(name, " \t\r\n")
		if name == "" || !dkValidTagName(name) {
			return tags, fmt.Errorf("auth: bad DKIM tag name %q", name)
		}
		if _, dup := tags[name]; dup {
			return tags, fmt.Errorf("auth: duplicate DKIM tag %q", name)
		}
		tags[name] = strings.Trim(value, " \t\r\n")
	}
	return tags, nil
}

var fastSeeds = []string{
	"",
	"b",
	"b=",
	"b=;",
	"b=x",
	"b =\r\n\tx;",
	"bb=x",
	"b\f= x y ; b=z",
	"DKIM-Signature: v=1; a=rsa-sha256; bh=abc=; b=def\r\n ghi; d=example.com\r\n",
	"DKIM-Signature: v=1; b=; bh=Zm9v; b= ;b=\r\n x\r\n",
	"a\nb\r\nc\rd\r\r\n\n\r",
	"x\r\n",
	"\r\n",
	"\n",
	"\r",
	" v = 1 ;\r\n\tb= abc\r\n def ;",
	"v=1; v=2",
	"v=1;;;; a=\xff b",
	"h=from\xc3\xa9:to; d=ex ample.\xffcom",
	"=x",
}

// refArFold is arFold as it was, building each word in a strings.Builder.
func refArFold(name, value string) []byte {
	// Byte-wise: strings.Map would turn invalid UTF-8 into U+FFFD.
	value = arCRLFToSpace.Replace(value)
	// Split into words at spaces outside quotes and comments.
	var words []string
	var cur strings.Builder
	depth, inQuote := 0, false
	flush := func() {
		if cur.Len() > 0 {
			words = append(words, cur.String())
			cur.Reset()
		}
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case inQuote:
			cur.WriteByte(c)
			if c == '\\' && i+1 < len(value) {
				i++
				cur.WriteByte(value[i])
			} else if c == '"' {
				inQuote = false
			}
			continue
		case c == '"':
			inQuote = true
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == '\\' && depth > 0 && i+1 < len(value):
			cur.WriteByte(c)
			i++
			c = value[i]
		case (c == ' ' || c == '\t') && depth == 0:
			flush()
			continue
		}
		cur.WriteByte(c)
	}
	flush()

	var b bytes.Buffer
	b.WriteString(name)
	b.WriteByte(':')
	lineLen := len(name) + 1
	for i, w := range words {
		clauseStart := i > 1 && strings.HasSuffix(words[i-1], ";")
		if i > 0 && (lineLen+1+len(w) > 78 || clauseStart) {
			b.WriteString("\r\n ")
			lineLen = 1
		} else {
			b.WriteByte(' ')
			lineLen++
		}
		b.WriteString(w)
		lineLen += len(w)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

var arSeeds = []string{
	"mx.example.net; dkim=pass header.d=example.com; spf=fail smtp.mailfrom=a@b.c",
	`id; dkim=fail reason="a long reason with many words in quotes that goes past the line limit" header.d=x`,
	"id; dmarc=pass (p=reject dis=none (nested comment)) header.from=x",
	"x\r\ny",
	"\x85 invalid UTF-8 \xff\xfe kept as is",
	`a "quoted \" still ( quoted" (comment \) still " comment) \ b\	c`,
	"  lead\tand trail  ",
	`"unterminated \`,
	"(unterminated \\",
}

// FuzzDKIMVerifyHelpers holds each of the verifier's string helpers equal
// to the code it replaced, on the same input.
func FuzzDKIMVerifyHelpers(f *testing.F) {
	for _, s := range append(fastSeeds, "Zm9v", " Zm 9v\r\n\tYmFy ", "Zm9v=", "Zm9v\xffYmFy", "====", "Zm\x00") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := string(dkAppendWithoutSigValue([]byte("prefix"), s)), "prefix"+refSigValueRE.ReplaceAllString(s, "$1"); got != want {
			t.Fatalf("without b= value %q: ref %q, ours %q", s, want, got)
		}
		want := refCRLFLines([]byte(s))
		if got := dkCRLFLines([]byte(s)); got != want {
			t.Fatalf("CRLF lines %q: ref %q, ours %q", s, want, got)
		}
		if got := string(dkAppendCRLFLines([]byte("prefix"), []byte(s))); got != "prefix"+want {
			t.Fatalf("append CRLF lines %q: ref %q, ours %q", s, want, got)
		}
		if got, want := dkStripWS(s), refStripWS(s); got != want {
			t.Fatalf("strip %q: ref %q, ours %q", s, want, got)
		}
		gotTags, gerr := ParseDKIMTags(s)
		wantTags, werr := refParseDKIMTags(s)
		if fmt.Sprint(gerr) != fmt.Sprint(werr) || !maps.Equal(gotTags, wantTags) {
			t.Fatalf("tags %q: ref %q %v, ours %q %v", s, wantTags, werr, gotTags, gerr)
		}
		wantB, werr := base64.StdEncoding.DecodeString(refStripWS(s))
		gotB, gerr := dkDecodeBase64(s)
		if fmt.Sprint(gerr) != fmt.Sprint(werr) || !bytes.Equal(gotB, wantB) {
			t.Fatalf("base64 %q: ref %x %v, ours %x %v", s, wantB, werr, gotB, gerr)
		}
	})
}

// FuzzArHelpers holds arFold and arNameIs equal to the code they replaced.
func FuzzArHelpers(f *testing.F) {
	for _, s := range arSeeds {
		f.Add("Authentication-Results", s)
	}
	for _, s := range []string{"Received: x", "received \t: x", "Authentication-Results:", "Authentication-Reſults: x", "no colon", ":", " Received: x"} {
		f.Add("Received", s)
		f.Add("Authentication-Results", s)
		f.Add("", s)
	}
	f.Fuzz(func(t *testing.T, name, s string) {
		if got, want := arFold(name, s), refArFold(name, s); !bytes.Equal(got, want) {
			t.Fatalf("fold %q %q: ref %q, ours %q", name, s, want, got)
		}
		want := strings.EqualFold(policy.Field{Raw: []byte(s)}.Name(), name)
		if got := arNameIs([]byte(s), name); got != want {
			t.Fatalf("name of %q is %q: ref %v, ours %v", s, name, want, got)
		}
	})
}

// FuzzDKIMFormatResults holds VerifyDKIM's own formatting of its
// Authentication-Results value equal to go-msgauth's, which it replaced
// for ASCII values.
func FuzzDKIMFormatResults(f *testing.F) {
	f.Add("mx.example.org", "pass", "example.com", "sel", "rsa-sha256", "dGhlIHNpZ25h", "@example.com", "", false)
	f.Add("mx", "fail", "ex ample.com", "s(1)", "a=b", `q"uo\te`, "user@example.com", "body hash did not verify", true)
	f.Add("mx", "permerror", "", "", "", "", "", "key syntax error: x\x00y;z", false)
	f.Add("", "temperror", "exämple.com", "s", "a", "b", "i", "key unavailable", true)
	f.Add("mx", "none", "", "", "", "", "", "", false)
	f.Fuzz(func(t *testing.T, id, result, d, s, a, b, i, reason string, two bool) {
		results := []DKIMResult{{Result: authres.ResultValue(result), Domain: d, Selector: s, Algorithm: a, Signature: b, Identifier: i, Reason: reason}}
		if two {
			results = append(results, DKIMResult{Result: authres.ResultPass, Domain: "example.net", Selector: "x", Algorithm: "ed25519-sha256", Signature: "abc+/def", Identifier: "@example.net"})
		}
		got, ok := dkFormatResults(id, results)
		if !ok {
			return
		}
		var ar []authres.Result
		for _, r := range results {
			ar = append(ar, r.authres())
		}
		if want := FormatAuthResults(id, ar...); got != want {
			t.Fatalf("ref %q\nours %q", want, got)
		}
	})
}
