package auth

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuthServIDOf(t *testing.T) {
	for in, want := range map[string]string{
		"mx.example.net; dkim=pass":                 "mx.example.net",
		"mx.example.net 1; none":                    "mx.example.net",
		"  (comment (nested)) mx.example.net; none": "mx.example.net",
		`"mx.example.net"; none`:                    "mx.example.net",
		`"mx\"x"; none`:                             `mx"x`,
		"mx.example.net":                            "mx.example.net",
		"; dkim=pass":                               "",
		"":                                          "",
		`"unterminated`:                             "",
		"\r\n\tmx.example.net;":                     "mx.example.net",
	} {
		assert.Equal(t, want, AuthServIDOf(in), "%q", in)
	}
}

func TestParseAuthResultsWithComments(t *testing.T) {
	id, rs, err := ParseAuthResults(`mx.example.net (our MX); dkim=pass (good signature) header.d=example.com header.s=s1; spf=fail (not "permitted") smtp.mailfrom=a@example.org; dmarc=pass (p=reject dis=none) header.from=example.com`)
	require.NoError(t, err)
	assert.Equal(t, "mx.example.net", id)
	require.Len(t, rs, 3)
	assert.Equal(t, &authres.DKIMResult{Value: authres.ResultPass, Domain: "example.com"}, rs[0])
	assert.Equal(t, &authres.SPFResult{Value: authres.ResultFail, From: "a@example.org"}, rs[1])
	assert.Equal(t, &authres.DMARCResult{Value: authres.ResultPass, From: "example.com"}, rs[2])
}

func TestAddAuthResultsFolds(t *testing.T) {
	var h policy.Header
	results := []authres.Result{
		&authres.SPFResult{Value: authres.ResultPass, From: "bounces.example.com"},
		&authres.GenericResult{Method: "dkim", Value: authres.ResultFail, Params: map[string]string{
			"header.d": "example.com", "header.s": "selector1", "reason": "signature did not verify: crypto/rsa: verification error",
		}},
	}
	AddAuthResults(&h, testAuthServID, results...)
	raw := string(h.Fields()[0].Raw)
	for _, line := range strings.Split(strings.TrimSuffix(raw, "\r\n"), "\r\n") {
		assert.LessOrEqual(t, len(line), 78, "%q", line)
	}
	assert.True(t, strings.HasPrefix(raw, "Authentication-Results: "+testAuthServID+"; spf=pass"), raw)
	// The quoted reason is not broken inside its quotes.
	assert.Contains(t, raw, `reason="signature did not verify: crypto/rsa: verification error"`)
	id, rs, err := ParseAuthResults(h.Get(AuthResultsField))
	require.NoError(t, err)
	assert.Equal(t, testAuthServID, id)
	assert.Len(t, rs, 2)
}

func TestAddAuthResultsNone(t *testing.T) {
	var h policy.Header
	AddAuthResults(&h, testAuthServID)
	assert.Equal(t, testAuthServID+"; none", h.Get(AuthResultsField))
}

func TestStripAuthResults(t *testing.T) {
	m := newTestMessage(t, "Authentication-Results: mx.example.net; dkim=pass\r\n"+
		"Authentication-Results: MX.EXAMPLE.NET; spf=pass\r\n"+
		"Authentication-Results: other.example; spf=pass\r\n"+
		"Authentication-Results: mx.example.net.evil; spf=pass\r\n"+
		sampleMessage)
	assert.Equal(t, 2, StripAuthResults(m.Header, "mx.example.net"))
	assert.Equal(t, []string{"other.example; spf=pass", "mx.example.net.evil; spf=pass"}, m.Header.Values(AuthResultsField))
}

func FuzzAuthServIDOf(f *testing.F) {
	for _, s := range []string{"mx.example.net; dkim=pass", `(c) "q\"x" 1; none`, "((", `"`, "\\(x) y;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id := AuthServIDOf(s)
		if strings.ContainsAny(id, ";") && !strings.Contains(s, `"`) {
			t.Fatalf("id %q of %q holds a separator", id, s)
		}
		_, _, _ = ParseAuthResults(s)
		stripped := arStripComments(s)
		if len(stripped) > len(s) {
			t.Fatalf("stripping comments grew %q to %q", s, stripped)
		}
	})
}

// FuzzArFold checks folding never changes the content: unfolding gives
// back the value with runs of white space preserved or turned into one
// folding white space, and every line but the first starts with a space.
func FuzzArFold(f *testing.F) {
	for _, s := range []string{
		"mx.example.net; dkim=pass header.d=example.com; spf=fail smtp.mailfrom=a@b.c",
		`id; dkim=fail reason="a long reason with many words in quotes that goes past the line limit" header.d=x`,
		"id; dmarc=pass (p=reject dis=none (nested comment)) header.from=x",
		"x\r\ny",
		"\x85 invalid UTF-8 \xff\xfe kept as is",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		raw := string(arFold("Authentication-Results", s))
		if !strings.HasSuffix(raw, "\r\n") {
			t.Fatal("no CRLF at the end")
		}
		lines := strings.Split(strings.TrimSuffix(raw, "\r\n"), "\r\n")
		for i, l := range lines[1:] {
			if !strings.HasPrefix(l, " ") {
				t.Fatalf("line %d %q is not a continuation", i+1, l)
			}
		}
		body := strings.Join(lines, "")
		norm := func(x string) string {
			x = strings.NewReplacer("\r", " ", "\n", " ").Replace(x)
			return strings.Join(strings.FieldsFunc(x, func(r rune) bool { return r == ' ' || r == '\t' }), "")
		}
		if norm(body) != norm("Authentication-Results: "+s) {
			t.Fatalf("content changed:\n%q\n%q", body, s)
		}
	})
}

// A quoted value may hold ";" and white space (RFC 8601 section 2.2:
// value = token / quoted-string). go-msgauth's parser splits at them
// anyway, so a client-chosen HELO quoted in one of our fields read back as
// a result clause of its own: "dkim=pass header.d=<anyone>".
func TestParseAuthResultsQuotedValues(t *testing.T) {
	helo := "x;dkim=pass\theader.d=example.com\tx"
	v := FormatAuthResults(testAuthServID, &authres.SPFResult{Value: authres.ResultNone, Helo: helo},
		&authres.DKIMResult{Value: authres.ResultFail, Reason: "signature did not verify; bad", Domain: "example.org"})
	tests := []struct {
		name string
		in   string
		want []authres.Result
	}{
		{"our own format", v, []authres.Result{
			&authres.SPFResult{Value: authres.ResultNone, Helo: helo},
			&authres.DKIMResult{Value: authres.ResultFail, Reason: "signature did not verify; bad", Domain: "example.org"},
		}},
		{"folded", string(arFold(AuthResultsField, v))[len(AuthResultsField)+2:], []authres.Result{
			&authres.SPFResult{Value: authres.ResultNone, Helo: helo},
			&authres.DKIMResult{Value: authres.ResultFail, Reason: "signature did not verify; bad", Domain: "example.org"},
		}},
		{"escaped quote and backslash", `mx; spf=pass smtp.mailfrom="a\"b\\c;d@example.com" (c; d=e)`, []authres.Result{
			&authres.SPFResult{Value: authres.ResultPass, From: `a"b\c;d@example.com`},
		}},
		{"none", "mx; none", nil},
		{"unknown method", "mx; x-foo=pass x.y=z", []authres.Result{
			&authres.GenericResult{Method: "x-foo", Value: authres.ResultPass, Params: map[string]string{"x.y": "z"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rs, err := ParseAuthResults(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, rs)
		})
	}
}

// A sender's DKIM tags end up in our field: a selector ending in a
// backslash must not leave a quoted-string open and hide the clauses
// after it.
func TestVerifyResultsQuotingIntact(t *testing.T) {
	rs := []DKIMResult{
		{Result: authres.ResultPermError, Domain: "example.org", Selector: `x"\`, Reason: `bad "t\"`},
		{Result: authres.ResultPass, Domain: "example.net", Selector: "s1"},
	}
	var h policy.Header
	AddAuthResults(&h, testAuthServID, rs[0].authres(), rs[1].authres())
	_, parsed, err := ParseAuthResults(h.Get(AuthResultsField))
	require.NoError(t, err)
	require.Len(t, parsed, 2, h.Get(AuthResultsField))
	assert.Equal(t, &authres.DKIMResult{Value: authres.ResultPass, Domain: "example.net"}, parsed[1])
}

// FuzzAuthResultsRoundTrip: any client-chosen value, made safe with
// arSafe, reads back as itself and as nothing more.
func FuzzAuthResultsRoundTrip(f *testing.F) {
	for _, s := range []string{"mx.example.com", "x;dkim=pass\theader.d=example.com\tx", `a"b\`, "a b; c=d", "", "é;ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		safe := arSafe(v)
		if strings.Trim(safe, " ") == "" || !utf8.ValidString(safe) {
			return
		}
		var h policy.Header
		AddAuthResults(&h, testAuthServID, &authres.SPFResult{Value: authres.ResultNone, Helo: safe},
			&authres.DMARCResult{Value: authres.ResultFail, From: "example.com"})
		_, rs, err := ParseAuthResults(h.Get(AuthResultsField))
		if err != nil {
			t.Fatalf("%q: %v", h.Get(AuthResultsField), err)
		}
		if len(rs) != 2 {
			t.Fatalf("%q gave %d results", h.Get(AuthResultsField), len(rs))
		}
		if got := rs[0].(*authres.SPFResult).Helo; strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(safe), " ") {
			t.Fatalf("helo %q read back as %q", safe, got)
		}
	})
}
