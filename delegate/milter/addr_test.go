package milter

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAddr(t *testing.T) {
	for _, c := range []struct {
		in      string
		network string
		address string
	}{
		{"inet:127.0.0.1:11332", "tcp", "127.0.0.1:11332"},
		{"inet:localhost:8891", "tcp", "localhost:8891"},
		{"INET:[::1]:11332", "tcp", "[::1]:11332"},
		{"inet:11332@127.0.0.1", "tcp", "127.0.0.1:11332"},
		{"inet6:11332@::1", "tcp", "[::1]:11332"},
		{"inet6:11332@[::1]", "tcp", "[::1]:11332"},
		{"tcp:127.0.0.1:1", "tcp", "127.0.0.1:1"},
		{"unix:/run/opendkim/opendkim.sock", "unix", "/run/opendkim/opendkim.sock"},
		{"local:/var/run/milter.sock", "unix", "/var/run/milter.sock"},
		{"unix:relative.sock", "unix", "relative.sock"},
	} {
		a, err := ParseAddr(c.in)
		require.NoError(t, err, c.in)
		assert.Equal(t, Addr{c.network, c.address}, a, c.in)
		b, err := ParseAddr(a.String())
		require.NoError(t, err, a.String())
		assert.Equal(t, a, b, "String reads back")
	}
	for _, in := range []string{
		"", "127.0.0.1:11332", "inet:", "inet:127.0.0.1", "inet:127.0.0.1:0", "inet:127.0.0.1:65536",
		"inet:127.0.0.1:port", "inet::11332", "inet:11332@", "unix:", "udp:127.0.0.1:53",
		"inet:127.0.0.1:+1", "inet:127.0.0.1:011332", "inet:a b:1", "unix:/a\x00b", "inet:[::1]", "inet:a@b@c:1",
	} {
		_, err := ParseAddr(in)
		assert.ErrorIs(t, err, ErrBadAddr, "%q", in)
	}
}

func TestParseDefaultAction(t *testing.T) {
	for in, want := range map[string]DefaultAction{"tempfail": Tempfail, "Accept": Accept, " accept ": Accept} {
		a, err := ParseDefaultAction(in)
		require.NoError(t, err)
		assert.Equal(t, want, a)
		b, err := ParseDefaultAction(a.String())
		require.NoError(t, err)
		assert.Equal(t, a, b)
	}
	for _, in := range []string{"", "reject", "quarantine"} {
		_, err := ParseDefaultAction(in)
		assert.Error(t, err, in)
	}
}

// FuzzParseAddr: ParseAddr never panics, and what it accepts is an
// address of its kind that String writes back as itself.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"inet:127.0.0.1:11332", "inet:11332@::1", "unix:/run/x.sock", "inet:[::1]:1", "local:x", "inet:a:b:c", "inet:@:", "inet6:[", "unix:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddr(s)
		if err != nil {
			if a != (Addr{}) {
				t.Fatalf("%q: error %v with address %+v", s, err, a)
			}
			return
		}
		switch a.Network {
		case "tcp", "unix":
		default:
			t.Fatalf("%q: network %q", s, a.Network)
		}
		if a.Address == "" || strings.ContainsAny(a.Address, "\x00\r\n ") {
			t.Fatalf("%q: address %q", s, a.Address)
		}
		b, err := ParseAddr(a.String())
		if err != nil || b != a {
			t.Fatalf("%q: %+v writes as %q, which reads as %+v, %v", s, a, a.String(), b, err)
		}
	})
}

// FuzzParseReply: a milter's reply text never panics the parser, and
// what it accepts is a 4xx or 5xx reply with a matching enhanced code.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"550 5.7.1 Spam", "451-4.7.1 a\r\n451 4.7.1 b", "554", "550 5.7", "250 ok", "599 9.9.9 x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, ok := parseReply(s)
		if !ok {
			return
		}
		if r.Code < 400 || r.Code > 599 || !isEnhanced(r.Enhanced, r.Code) || r.Text == "" {
			t.Fatalf("%q: %+v", s, r)
		}
	})
}

func TestWriteMessage(t *testing.T) {
	for _, c := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\nb\n"}, "a\r\nb\r\n"},
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n"},
		{[]string{"a\r", "\nb"}, "a\r\nb"},
		{[]string{"a\rb"}, "a\r\nb"},
		{[]string{"a\r\r\n"}, "a\r\n\r\n"},
		{[]string{"", "x", ""}, "x"},
		{nil, ""},
	} {
		var b strings.Builder
		var chunks [][]byte
		for _, s := range c.chunks {
			chunks = append(chunks, []byte(s))
		}
		require.NoError(t, writeMessage(&b, []byte("H: v\r\n"), chunks))
		assert.Equal(t, "H: v\r\n\r\n"+c.want, b.String(), "%q", c.chunks)
	}
}

// FuzzFieldRaw: whatever value a milter gives a field, the field is one
// field of a header that still parses: no field injected, no end of
// header, with or without SMFIP_HDR_LEADSPC.
func FuzzFieldRaw(f *testing.F) {
	for _, s := range []string{"v", "a\n\tb", "a\nBcc: x", "a\r\n\r\nbody", "\n", " x", "a\rb", ""} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, value string, lead bool) {
		if strings.IndexByte(value, 0) >= 0 {
			return // a milter's values are C strings
		}
		s := &session{leadSpace: lead}
		raw := s.fieldRaw("X-Milter", value)
		h, err := parseHeader(append([]byte("Subject: x\r\n"), raw...))
		if err != nil {
			t.Fatalf("%q: %q does not parse: %v", value, raw, err)
		}
		if h.Len() != 2 || !strings.EqualFold(h.Fields()[1].Name(), "X-Milter") {
			t.Fatalf("%q: %q gives %d fields", value, raw, h.Len())
		}
	})
}
