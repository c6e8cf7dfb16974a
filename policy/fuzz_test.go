package policy_test

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

// FuzzParseAddress checks that every address ParseAddress accepts prints
// in a form that parses back to the same address.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"", "<>", "user@example.com", "<User@EXAMPLE.com.>", `"a@b"@example.com`, "a@b@example.com",
		`"a\"b\\c"@example.com`, "<@a.example,@b.example:u@c.example>", "postmaster", "Postmaster",
		"user@bücher.example", "δοκιμή@παράδειγμα.δοκιμή", "user@[192.0.2.1]", "user@[IPv6:2001:db8::1]",
		`"john doe"@example.com`, `".a."@example.com`, "a..b@example.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := policy.ParseAddress(s)
		if err != nil {
			if a != (policy.Address{}) {
				t.Fatalf("error %v with non-zero address %#v", err, a)
			}
			return
		}
		str := a.String()
		if len(str) > 256 {
			t.Fatalf("%q printed as %q, longer than 256", s, str)
		}
		b, err := policy.ParseAddress(str)
		if err != nil {
			t.Fatalf("%q printed as %q, which does not parse: %v", s, str, err)
		}
		if !a.Equal(b) || a != b {
			t.Fatalf("%q -> %#v printed as %q -> %#v", s, a, str, b)
		}
		if b.String() != str {
			t.Fatalf("printing is not stable: %q then %q", str, b.String())
		}
		if p, err := policy.ParseAddress(a.Path()); err != nil || p != a {
			t.Fatalf("Path %q parses to %#v, %v", a.Path(), p, err)
		}
	})
}

// FuzzReadHeader checks that ReadHeader never panics, that an unedited
// header serializes back to the exact input bytes, and that a field added
// with any value reads back as one field with that value.
func FuzzReadHeader(f *testing.F) {
	for _, s := range []string{
		"", "\r\n", "Subject: a\r\n\r\nbody", "Subject: a\r\n b\r\n\tc\r\nTo: x\r\n\r\n",
		"Subject: a\nTo: b\n\nbody\n", "Subject: a", "Subject: a\r\nbody line\r\n",
		" leading\r\n", ": x\r\n\r\n", "From x Mon Jan 1 00:00:00 2024\r\n\r\n",
		"A: 1\r\nB: 2\r\n\r\n\r\n", "X: \xff\x00\r\n\r\n", "Subject: a\rb\r\n\r\n",
	} {
		f.Add(s, "X-Fuzz", "value")
	}
	f.Fuzz(func(t *testing.T, in, key, value string) {
		br := bufio.NewReaderSize(strings.NewReader(in), 4096)
		h, n, sep, err := policy.ReadHeader(br, 8192)
		if err != nil {
			if err != policy.ErrHeaderTooLarge {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		rest, _ := io.ReadAll(br)
		if int(n)+len(rest) != len(in) {
			t.Fatalf("consumed %d + rest %d != %d", n, len(rest), len(in))
		}
		var hb bytes.Buffer
		h.WriteTo(&hb)
		if int64(hb.Len()) != h.Size() || h.Size() > n {
			t.Fatalf("size %d, written %d, consumed %d", h.Size(), hb.Len(), n)
		}
		blank := in[h.Size():n]
		if sep != (blank == "\r\n" || blank == "\n") || (!sep && blank != "") {
			t.Fatalf("sep %v with separator %q", sep, blank)
		}
		if got := hb.String() + blank + string(rest); got != in {
			t.Fatalf("round trip:\n%q\n%q", in, got)
		}
		// The header alone reads back to the same fields.
		again, _, _, err := policy.ReadHeader(bufio.NewReader(bytes.NewReader(hb.Bytes())), 0)
		if err != nil || again.Len() != h.Len() {
			t.Fatalf("header re-read: %v, %d fields instead of %d", err, again.Len(), h.Len())
		}
		// An added field is one field, whatever the value holds.
		if !strings.ContainsFunc(key, func(r rune) bool { return r > ' ' && r < 0x7f && r != ':' }) {
			return // Add panics on a name without a valid byte
		}
		h.Add(key, value)
		hb.Reset()
		h.WriteTo(&hb)
		// A value Add cannot fold (no white space) makes a line as long as
		// itself: read back with a buffer that holds it (ReadHeader refuses a
		// line longer than its reader's buffer).
		again, _, _, err = policy.ReadHeader(bufio.NewReaderSize(bytes.NewReader(hb.Bytes()), max(hb.Len(), 4096)), 1<<20)
		if err != nil {
			t.Fatalf("after Add(%q, %q): %v:\n%q", key, value, err, hb.String())
		}
		if again.Len() != h.Len() {
			t.Fatalf("after Add(%q, %q): %d fields instead of %d:\n%q", key, value, again.Len(), h.Len(), hb.String())
		}
		want := strings.Join(strings.Fields(strings.NewReplacer("\r", " ", "\n", " ").Replace(value)), " ")
		if got := again.Fields()[0].Value(); got != want {
			t.Fatalf("Add(%q, %q) reads back as %q, want %q", key, value, got, want)
		}
	})
}
