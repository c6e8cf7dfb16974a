package relay

import (
	"bufio"
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		in       string
		code     int
		enhanced string
		text     string
		err      bool
	}{
		{"250 2.1.5 Ok\r\n", 250, "2.1.5", "Ok", false},
		{"550 5.1.1 <u@x>: Recipient address rejected\r\n", 550, "5.1.1", "<u@x>: Recipient address rejected", false},
		{"451 Try later\r\n", 451, "", "Try later", false},
		{"250-mx.test\r\n250-SIZE 100\r\n250 STARTTLS\r\n", 250, "", "mx.test; SIZE 100; STARTTLS", false},
		{"550-5.7.1 first\r\n550 5.7.1 second\r\n", 550, "5.7.1", "first; second", false},
		{"250 4.0.0 class mismatch\r\n", 250, "", "4.0.0 class mismatch", false},
		{"220\r\n", 220, "", "", false},
		{"220 bare LF\n", 220, "", "bare LF", false},
		{"25 short\r\n", 0, "", "", true},
		{"abc def\r\n", 0, "", "", true},
		{"250-a\r\n251 b\r\n", 0, "", "", true},
		{"250-a\r\n", 0, "", "", true}, // EOF inside a multiline reply
		{"699 no\r\n", 0, "", "", true},
		{"250x\r\n", 0, "", "", true},
		{strings.Repeat("2", 3000) + "\r\n", 0, "", "", true},
	}
	for _, tc := range tests {
		r, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), 16))
		if tc.err {
			assert.Error(t, err, "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		assert.Equal(t, tc.code, r.Code, "%q", tc.in)
		assert.Equal(t, tc.enhanced, r.Enhanced, "%q", tc.in)
		assert.Equal(t, tc.text, r.text(), "%q", tc.in)
	}
	r, err := readReply(bufio.NewReader(strings.NewReader("451 no code\r\n")))
	require.NoError(t, err)
	assert.Equal(t, "4.0.0", r.policyReply().Enhanced)
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"250 2.1.5 Ok\r\n", "250-a\r\n250 b\r\n", "550 5.7.1\r\n", "220\n", "999 x\r\n", "250-\r\n250 \r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := readReply(bufio.NewReader(strings.NewReader(s)))
		if err != nil {
			return
		}
		if r.Code < 200 || r.Code > 599 || len(r.Lines) == 0 {
			t.Fatalf("accepted bad reply %+v from %q", r, s)
		}
		pr := finalReply(r)
		if pr.Code < 200 || pr.Code > 599 || pr.Enhanced == "" || pr.Enhanced[0] != byte('0'+pr.Code/100) {
			t.Fatalf("bad policy reply %+v from %q", pr, s)
		}
	})
}

// dotStuff runs the dot writer over chunks.
func dotStuff(t testing.TB, chunks ...string) string {
	var b bytes.Buffer
	w := newDotWriter(&b)
	for _, c := range chunks {
		_, err := w.Write([]byte(c))
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	return b.String()
}

func TestDotWriter(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n.\r\n"},
		{[]string{"no final line end"}, "no final line end\r\n.\r\n"},
		{[]string{".leading\r\n..two\r\nmid.dot\r\n.\r\n"}, "..leading\r\n...two\r\nmid.dot\r\n..\r\n.\r\n"},
		{[]string{"bare\nlf\n"}, "bare\r\nlf\r\n.\r\n"},
		{[]string{"bare\rcr\r"}, "bare\r\ncr\r\n.\r\n"},
		{[]string{"a\r", "\n.b\r", "\n"}, "a\r\n..b\r\n.\r\n"},
		{[]string{"a\r", ".b"}, "a\r\n..b\r\n.\r\n"},
		{[]string{"x\n.\n"}, "x\r\n..\r\n.\r\n"}, // a smuggled <LF>.<LF> stays data
		{[]string{"x\r\n.\r", "\r\n"}, "x\r\n..\r\n\r\n.\r\n"},
		{[]string{""}, ".\r\n"},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, dotStuff(t, tc.in...), "%q", tc.in)
	}
}

// FuzzDotWriter checks that the output always un-stuffs to the input with
// normalized line ends, has no bare CR or LF, and ends only at its end.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"a\r\n.b\r\n", "x\n.\n", "\r\r\n.", ".", "a\rb\nc\r\n"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, split int) {
		if split < 0 {
			split = -split
		}
		var chunks []string
		if split > 0 && split < len(s) {
			chunks = []string{s[:split], s[split:]}
		} else {
			chunks = []string{s}
		}
		out := dotStuff(t, chunks...)
		for i := 0; i < len(out); i++ {
			if out[i] == '\n' && (i == 0 || out[i-1] != '\r') || out[i] == '\r' && (i+1 == len(out) || out[i+1] != '\n') {
				t.Fatalf("bare line end at %d in %q", i, out)
			}
		}
		if idx := strings.Index(out, "\r\n.\r\n"); idx != len(out)-5 && !(idx == -1 && out == ".\r\n") {
			t.Fatalf("early end of data at %d in %q", idx, out)
		}
		// Un-stuff and compare with the normalized input.
		lines := strings.Split(strings.TrimSuffix(out, ".\r\n"), "\r\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, ".")
		}
		got := strings.Join(lines, "\r\n")
		norm := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n"), "\n", "\r\n")
		if norm != "" && !strings.HasSuffix(norm, "\r\n") {
			norm += "\r\n"
		}
		if got != norm {
			t.Fatalf("round trip of %q: got %q want %q", s, got, norm)
		}
	})
}

// TestNilLoggerIsDefault: a transport whose Logger is nil logs to
// slog.Default(), as the fields' docs say.
func TestNilLoggerIsDefault(t *testing.T) {
	assert.Same(t, slog.Default(), orDefault(nil))
	l := slog.New(slog.DiscardHandler)
	assert.Same(t, l, orDefault(l))
}
