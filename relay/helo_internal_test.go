package relay

import (
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestHeloSyntax(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		in   string
		want heloClass
		ip   string
	}{
		{"mail.example.com", heloName, ""},
		{"MAIL.Example.COM", heloName, ""},
		{"mail.example.com.", heloName, ""},
		{"win_host.corp.example", heloName, ""},
		{"a-b.c0", heloName, ""},
		{"xn--bcher-kva.example", heloName, ""},
		{long + "." + long + ".com", heloName, ""},
		{"laptop", heloNotFQDN, ""},
		{"[192.0.2.1]", heloLiteral, "192.0.2.1"},
		{"[IPv6:2001:db8::1]", heloLiteral, "2001:db8::1"},
		{"[ipv6:::1]", heloLiteral, "::1"},
		{"[IPv6:::ffff:192.0.2.1]", heloLiteral, "::ffff:192.0.2.1"},
		{"", heloInvalid, ""},
		{".", heloInvalid, ""},
		{"mail..example.com", heloInvalid, ""},
		{".example.com", heloInvalid, ""},
		{"mail.example.com..", heloInvalid, ""},
		{"-mail.example.com", heloInvalid, ""},
		{"mail-.example.com", heloInvalid, ""},
		{"mail example.com", heloInvalid, ""},
		{"mail.exa\x00mple.com", heloInvalid, ""},
		{"bücher.example", heloInvalid, ""},
		{"192.0.2.1", heloInvalid, ""},
		{"12345", heloInvalid, ""},
		{"host.123", heloInvalid, ""},
		{strings.Repeat("a", 64) + ".com", heloInvalid, ""},
		{strings.Repeat(long+".", 4) + "com", heloInvalid, ""},
		{"[192.0.2.1", heloInvalid, ""},
		{"[192.0.2.256]", heloInvalid, ""},
		{"[192.0.2.01]", heloInvalid, ""},
		{"[2001:db8::1]", heloInvalid, ""},
		{"[IPv6:192.0.2.1]", heloInvalid, ""},
		{"[IPv6:fe80::1%eth0]", heloInvalid, ""},
		{"[tag:content]", heloInvalid, ""},
		{"[]", heloInvalid, ""},
		{"user@example.com", heloInvalid, ""},
		{"<mail.example.com>", heloInvalid, ""},
	}
	for _, tt := range tests {
		got, ip := heloSyntax(tt.in)
		assert.Equal(t, tt.want, got, "%q", tt.in)
		if tt.ip != "" {
			assert.Equal(t, netip.MustParseAddr(tt.ip), ip, "%q", tt.in)
		}
	}
}

// FuzzHeloSyntax checks that the classifier never panics and that what it
// accepts is safe to put into a Received field: printable ASCII without
// spaces, of bounded length, a name made of labels or an IP literal.
func FuzzHeloSyntax(f *testing.F) {
	for _, s := range []string{"mail.example.com", "laptop", "[192.0.2.1]", "[IPv6:2001:db8::1]", "", "[", "a..b", "1.2.3.4", "x_y.z.", "[IPv6:::ffff:1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		class, ip := heloSyntax(s)
		if class == heloInvalid {
			return
		}
		if len(s) > 270 {
			t.Fatalf("accepted %d bytes", len(s))
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				t.Fatalf("accepted byte %#x in %q", s[i], s)
			}
		}
		if !utf8.ValidString(s) {
			t.Fatalf("accepted invalid UTF-8 %q", s)
		}
		switch class {
		case heloLiteral:
			if !ip.IsValid() || !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
				t.Fatalf("literal %q gave %v", s, ip)
			}
		case heloName, heloNotFQDN:
			if strings.ContainsAny(s, "[]@<>:") {
				t.Fatalf("name %q has a forbidden character", s)
			}
			if (class == heloName) != strings.Contains(strings.TrimSuffix(s, "."), ".") {
				t.Fatalf("name %q classed %d", s, class)
			}
			// Case does not matter.
			if c, _ := heloSyntax(strings.ToUpper(s)); c != class {
				t.Fatalf("%q is %d but upper case %d", s, class, c)
			}
		}
	})
}

func TestSanitizeHelo(t *testing.T) {
	assert.Equal(t, "a?b?c??", sanitizeHelo("a b\x00c<>"))
	assert.Len(t, sanitizeHelo(strings.Repeat("x", 500)), 64)
}
