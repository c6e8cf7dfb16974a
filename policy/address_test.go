package policy_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func TestParseAddress(t *testing.T) {
	long64 := strings.Repeat("a", 64)
	label63 := strings.Repeat("b", 63)
	tests := []struct {
		in     string
		local  string
		domain string
		str    string // String(); "" means in without brackets
	}{
		// null reverse-path
		{in: "<>", str: ""},
		{in: "", str: ""},
		{in: "  <>  ", str: ""},
		// plain, with and without brackets and spaces
		{in: "user@example.com", local: "user", domain: "example.com"},
		{in: "<user@example.com>", local: "user", domain: "example.com", str: "user@example.com"},
		{in: " <user@example.com> ", local: "user", domain: "example.com", str: "user@example.com"},
		{in: "first.last+tag@sub.example.com", local: "first.last+tag", domain: "sub.example.com"},
		{in: "!#$%&'*+-/=?^_`{|}~@example.com", local: "!#$%&'*+-/=?^_`{|}~", domain: "example.com"},
		// local part case is kept, domain lower-cased, trailing dot removed
		{in: "John.Doe@EXAMPLE.Com", local: "John.Doe", domain: "example.com", str: "John.Doe@example.com"},
		{in: "user@example.com.", local: "user", domain: "example.com", str: "user@example.com"},
		{in: "user@under_score.example", local: "user", domain: "under_score.example"},
		// quoted local parts
		{in: `"john doe"@example.com`, local: "john doe", domain: "example.com"},
		{in: `"a@b"@example.com`, local: "a@b", domain: "example.com"},
		{in: `<"a@b"@example.com>`, local: "a@b", domain: "example.com", str: `"a@b"@example.com`},
		{in: `"a\"b"@example.com`, local: `a"b`, domain: "example.com"},
		{in: `"a\\b"@example.com`, local: `a\b`, domain: "example.com"},
		{in: `"\a\b"@example.com`, local: "ab", domain: "example.com", str: "ab@example.com"},
		{in: `"plain"@example.com`, local: "plain", domain: "example.com", str: "plain@example.com"},
		{in: `"a..b"@example.com`, local: "a..b", domain: "example.com"},
		{in: `".a"@example.com`, local: ".a", domain: "example.com"},
		// go-smtp strips the quotes: split at the last @ and quote again
		{in: "a@b@example.com", local: "a@b", domain: "example.com", str: `"a@b"@example.com`},
		// source routes are ignored
		{in: "<@a.example,@b.example:user@c.example>", local: "user", domain: "c.example", str: "user@c.example"},
		{in: "@relay.example:user@example.com", local: "user", domain: "example.com", str: "user@example.com"},
		// postmaster without domain
		{in: "<postmaster>", local: "postmaster", str: "postmaster"},
		{in: "<Postmaster>", local: "Postmaster", str: "Postmaster"},
		{in: "POSTMASTER", local: "POSTMASTER"},
		// IDNA: U-label to A-label, mapped for lookup
		{in: "user@bücher.example", local: "user", domain: "xn--bcher-kva.example", str: "user@xn--bcher-kva.example"},
		{in: "user@BÜCHER.example", local: "user", domain: "xn--bcher-kva.example", str: "user@xn--bcher-kva.example"},
		{in: "user@xn--bcher-kva.example", local: "user", domain: "xn--bcher-kva.example"},
		{in: "δοκιμή@παράδειγμα.δοκιμή", local: "δοκιμή", domain: "xn--hxajbheg2az3al.xn--jxalpdlp", str: "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"},
		// domain literals
		{in: "user@[192.0.2.1]", local: "user", domain: "[192.0.2.1]"},
		{in: "user@[IPv6:2001:DB8::1]", local: "user", domain: "[ipv6:2001:db8::1]", str: "user@[ipv6:2001:db8::1]"},
		{in: "user@[ipv6:2001:db8:0:0:0:0:0:1]", local: "user", domain: "[ipv6:2001:db8::1]", str: "user@[ipv6:2001:db8::1]"},
		{in: "user@[IPv6:::ffff:192.0.2.1]", local: "user", domain: "[ipv6:::ffff:192.0.2.1]", str: "user@[ipv6:::ffff:192.0.2.1]"},
		// limits: exactly at them is fine
		{in: long64 + "@example.com", local: long64, domain: "example.com"},
		{in: "u@" + label63 + ".example", local: "u", domain: label63 + ".example"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := policy.ParseAddress(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.local, a.Local)
			assert.Equal(t, tt.domain, a.Domain)
			want := tt.str
			if want == "" && tt.local != "" {
				want = tt.in
			}
			assert.Equal(t, want, a.String())
			assert.Equal(t, "<"+want+">", a.Path())
			assert.Equal(t, tt.local == "" && tt.domain == "", a.IsNull())
			assert.Equal(t, strings.HasPrefix(tt.domain, "["), a.IsLiteral())

			back, err := policy.ParseAddress(a.String())
			require.NoError(t, err, "String() parses back")
			assert.True(t, a.Equal(back), "round trip %q -> %q", a.String(), back.String())
			assert.Equal(t, a, back)
		})
	}
}

func TestParseAddressErrors(t *testing.T) {
	longDomain := strings.Repeat("abcdefghi.", 26) + "example" // 267 chars
	tests := []struct {
		in  string
		err error
	}{
		{"<user@example.com", policy.ErrAddressSyntax},
		{"user", policy.ErrAddressSyntax},
		{"postmaster@", policy.ErrAddressSyntax},
		{"@example.com", policy.ErrAddressSyntax},
		{"user@", policy.ErrAddressSyntax},
		{"@", policy.ErrAddressSyntax},
		{"<@>", policy.ErrAddressSyntax},
		{"<@a.example,b.example:user@c.example>", policy.ErrAddressSyntax},
		{"<@a.example:>", policy.ErrAddressSyntax},
		{"<@bad..example:user@c.example>", policy.ErrAddressSyntax},
		{"a b@example.com", policy.ErrAddressSyntax},
		{"a\"b@example.com", policy.ErrAddressSyntax},
		{"a\\b@example.com", policy.ErrAddressSyntax},
		{"a\x00b@example.com", policy.ErrAddressSyntax},
		{"a\tb@example.com", policy.ErrAddressSyntax},
		{"a\x7f@example.com", policy.ErrAddressSyntax},
		{"a\r\nRCPT TO:<x@y>@example.com", policy.ErrAddressSyntax},
		{`""@example.com`, policy.ErrAddressSyntax},
		{`"a"b"@example.com`, policy.ErrAddressSyntax},
		{`"a\"@example.com`, policy.ErrAddressSyntax},
		{"\"a\x01\"@example.com", policy.ErrAddressSyntax},
		{"\"\\\t\"@0", policy.ErrAddressSyntax}, // fuzz: an escaped TAB printed unescaped did not parse back
		{"\"\\\x00\"@example.com", policy.ErrAddressSyntax},
		{"\xff\xfe@example.com", policy.ErrAddressSyntax},
		{"user@exa mple.com", policy.ErrAddressSyntax},
		{"user@example..com", policy.ErrAddressSyntax},
		{"user@.example.com", policy.ErrAddressSyntax},
		{"user@example.com..", policy.ErrAddressSyntax},
		{"user@-example.com", policy.ErrAddressSyntax},
		{"user@example-.com", policy.ErrAddressSyntax},
		{"user@exam!ple.com", policy.ErrAddressSyntax},
		{"user@example.com>", policy.ErrAddressSyntax},
		{"user@" + strings.Repeat("b", 64) + ".example", policy.ErrAddressSyntax},
		{"user@[192.0.2.1", policy.ErrAddressSyntax},
		{"user@[192.0.2.256]", policy.ErrAddressSyntax},
		{"user@[2001:db8::1]", policy.ErrAddressSyntax},
		{"user@[IPv6:192.0.2.1]", policy.ErrAddressSyntax},
		{"user@[IPv6:fe80::1%eth0]", policy.ErrAddressSyntax},
		{"user@[example.com]", policy.ErrAddressSyntax},
		{"user@[]", policy.ErrAddressSyntax},
		{"user@a\u200db.example", policy.ErrAddressSyntax}, // ZWJ is not allowed here by IDNA
		{strings.Repeat("a", 65) + "@example.com", policy.ErrAddressLength},
		{"user@" + longDomain, policy.ErrAddressLength},
		{strings.Repeat("a", 60) + "@" + strings.Repeat("b.", 100) + "example", policy.ErrAddressLength},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := policy.ParseAddress(tt.in)
			assert.ErrorIs(t, err, tt.err)
			assert.Equal(t, policy.Address{}, a)
		})
	}
}

func TestAddressEqual(t *testing.T) {
	tests := []struct {
		a, b string
		eq   bool
	}{
		{"user@example.com", "user@EXAMPLE.com.", true},
		{`"a@b"@example.com`, "a@b@example.com", true},
		{"User@example.com", "user@example.com", false},
		{"postmaster@example.com", "POSTMASTER@example.com", true},
		{"postmaster", "PostMaster", true},
		{"postmaster", "postmaster@example.com", false},
		{"user@bücher.example", "user@xn--bcher-kva.example", true},
		{"<>", "", true},
		{"<>", "user@example.com", false},
		{"user@[IPv6:2001:db8::1]", "user@[ipv6:2001:DB8:0::1]", true},
	}
	for _, tt := range tests {
		t.Run(tt.a+" "+tt.b, func(t *testing.T) {
			a := policy.MustParseAddress(tt.a)
			b := policy.MustParseAddress(tt.b)
			assert.Equal(t, tt.eq, a.Equal(b))
			assert.Equal(t, tt.eq, b.Equal(a), "symmetric")
		})
	}
}

func TestMustParseAddressPanics(t *testing.T) {
	assert.Panics(t, func() { policy.MustParseAddress("not an address") })
	assert.NotPanics(t, func() { policy.MustParseAddress("a@example.com") })
}

func TestNormalizeDomain(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{in: "Example.COM.", want: "example.com"},
		{in: "bücher.example", want: "xn--bcher-kva.example"},
		{in: "[192.0.2.1]", want: "[192.0.2.1]"},
		{in: "", err: true},
		{in: ".", err: true},
		{in: "a..b", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := policy.NormalizeDomain(tt.in)
			if tt.err {
				assert.ErrorIs(t, err, policy.ErrAddressSyntax)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			again, err := policy.NormalizeDomain(got)
			require.NoError(t, err)
			assert.Equal(t, got, again, "idempotent")
		})
	}
}

// The printed form of an address must parse back, so the length limit
// applies to it, not only to what was received.
func TestParseAddressLengthOfPrintedForm(t *testing.T) {
	domain := strings.Repeat("d", 60) + "." + strings.Repeat("e", 60) + "." + strings.Repeat("f", 60) + ".example" // 190
	tests := []struct {
		name  string
		local string
		ok    bool
	}{
		{"dot-atom at the limit", strings.Repeat("a", 64), true},
		{"stripped quotes, printed within limit", "a@" + strings.Repeat("a", 59), true},
		{"stripped quotes, printed over limit", "a@" + strings.Repeat("a", 62), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.local + "@" + domain
			require.LessOrEqual(t, len(in), 256)
			a, err := policy.ParseAddress(in)
			if !tt.ok {
				assert.ErrorIs(t, err, policy.ErrAddressLength)
				return
			}
			require.NoError(t, err)
			assert.LessOrEqual(t, len(a.String()), 256)
			back, err := policy.ParseAddress(a.String())
			require.NoError(t, err)
			assert.True(t, a.Equal(back))
		})
	}
}
