package console

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestReadBody(t *testing.T) {
	tests := []struct {
		name, raw string
		text      string
		fromHTML  bool
		parts     int
	}{
		{"plain", "Subject: x\r\n\r\nhello\r\nworld\r\n", "hello\nworld\n", false, 0},
		{"quoted-printable latin1", "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n", "café\n", false, 0},
		{"html only", "Content-Type: text/html\r\n\r\n<p>Hi <a href=\"http://x.example/\">there</a></p><script>x()</script><img src=\"http://t.example/p.gif\">", "Hi there", true, 0},
		{"alternative with attachment", "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\nContent-Type: text/plain\r\n\r\nthe text\r\n--c\r\nContent-Type: text/html\r\n\r\n<p>the html</p>\r\n--c--\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n", "the text", false, 1},
		{"control characters and bidi", "Subject: x\r\n\r\na\x1b[31mb\u202ec\r\n", "a[31mbc\n", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := readBody(strings.NewReader(tt.raw))
			assert.Equal(t, tt.text, v.Text)
			assert.Equal(t, tt.fromHTML, v.FromHTML)
			assert.Len(t, v.Parts, tt.parts)
		})
	}
	long := "Subject: x\r\n\r\n" + strings.Repeat("a", maxBodyText+10)
	v := readBody(strings.NewReader(long))
	assert.True(t, v.Truncated)
	assert.Len(t, v.Text, maxBodyText)
}

func FuzzReadBody(f *testing.F) {
	f.Add("Subject: x\r\n\r\nhello\r\n")
	f.Add("Content-Type: text/html\r\n\r\n<p>Hi <b>x</b><script>y</script>")
	f.Add("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n\xc1\r\n--b--\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		v := readBody(strings.NewReader(raw))
		if !utf8.ValidString(v.Text) {
			t.Fatalf("invalid UTF-8 in the text view: %q", v.Text)
		}
		if strings.ContainsAny(v.Text, "\r\x00\x1b\u202e") {
			t.Fatalf("control character in the text view: %q", v.Text)
		}
	})
}
