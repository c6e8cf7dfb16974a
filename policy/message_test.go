package policy_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// spool writes raw to a file the way the smtp package spools DATA (written,
// fsynced, reopened read-only) and returns it open.
func spool(t *testing.T, raw string) (*os.File, int64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "msg")
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = f.WriteString(raw)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	f, err = os.Open(path)
	require.NoError(t, err)
	return f, int64(len(raw))
}

func newFileMessage(t *testing.T, raw string) (*policy.Message, *os.File) {
	t.Helper()
	f, size := spool(t, raw)
	m, err := policy.NewMessage(f, size, f)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m, f
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(b)
}

func writeTo(t *testing.T, m *policy.Message) string {
	t.Helper()
	var b bytes.Buffer
	n, err := m.WriteTo(&b)
	require.NoError(t, err)
	assert.Equal(t, int64(b.Len()), n)
	return b.String()
}

func TestMessage(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		edit   func(m *policy.Message)
		want   string // whole message after the edit
		body   string
		fields int
	}{
		{
			name: "untouched is byte for byte",
			raw:  "Received: from x\r\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject:  odd   spacing \r\n\r\nbody\r\n.dot\r\n",
			want: "Received: from x\r\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject:  odd   spacing \r\n\r\nbody\r\n.dot\r\n",
			body: "body\r\n.dot\r\n", fields: 2,
		},
		{
			name: "add on top, delete, set",
			raw:  "Subject: hi\r\nX-Spam: maybe\r\nTo: a@example.com\r\n\r\nbody\r\n",
			edit: func(m *policy.Message) {
				m.Header.Add("Authentication-Results", "mx.example.com; spf=pass")
				m.Header.Del("X-Spam")
				m.Header.Set("Subject", "[ext] hi")
			},
			want: "Authentication-Results: mx.example.com; spf=pass\r\nSubject: [ext] hi\r\nTo: a@example.com\r\n\r\nbody\r\n",
			body: "body\r\n", fields: 3,
		},
		{
			name: "no header at all",
			raw:  "just a body line\r\n",
			want: "just a body line\r\n",
			body: "just a body line\r\n",
		},
		{
			name:   "header without blank line and without body",
			raw:    "Subject: hi\r\n",
			want:   "Subject: hi\r\n\r\n",
			fields: 1,
		},
		{
			name: "header ended by a non-field line",
			raw:  "Subject: hi\r\nbody starts here\r\n",
			edit: func(m *policy.Message) { m.Header.Append("X-A", "1") },
			want: "Subject: hi\r\nX-A: 1\r\nbody starts here\r\n",
			body: "body starts here\r\n", fields: 2,
		},
		{
			name: "empty message",
			raw:  "",
			want: "\r\n",
		},
		{
			name:   "empty body",
			raw:    "Subject: hi\r\n\r\n",
			want:   "Subject: hi\r\n\r\n",
			fields: 1,
		},
		{
			name: "LF separator is written as CRLF",
			raw:  "Subject: hi\n\nbody\n",
			want: "Subject: hi\n\r\nbody\n",
			body: "body\n", fields: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newFileMessage(t, tt.raw)
			if tt.edit != nil {
				tt.edit(m)
			}
			assert.Equal(t, tt.fields, m.Header.Len())
			assert.Equal(t, tt.want, readAll(t, m.Reader()))
			assert.Equal(t, tt.want, writeTo(t, m))
			assert.Equal(t, int64(len(tt.want)), m.Size())
			assert.Equal(t, tt.body, readAll(t, m.Body()))
			assert.Equal(t, int64(len(tt.body)), m.BodySize())
		})
	}
}

func TestMessageReadersAreIndependent(t *testing.T) {
	m, _ := newFileMessage(t, "Subject: hi\r\n\r\nline one\r\nline two\r\n")
	r1 := m.Reader()
	m.Header.Add("X-Later", "1")
	r2 := m.Reader()
	assert.Equal(t, "Subject: hi\r\n\r\nline one\r\nline two\r\n", readAll(t, r1), "a reader keeps the header of its time")
	assert.Equal(t, "X-Later: 1\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n", readAll(t, r2))

	b1, b2 := m.Body(), m.Body()
	buf := make([]byte, 4)
	_, err := io.ReadFull(b1, buf)
	require.NoError(t, err)
	assert.Equal(t, "line one\r\nline two\r\n", readAll(t, b2))
	assert.Equal(t, " one\r\nline two\r\n", readAll(t, b1))
}

func TestMessageLargeBodyStreams(t *testing.T) {
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n", 80_000) // ~5 MiB
	m, _ := newFileMessage(t, "Subject: big\r\n\r\n"+body)
	assert.Equal(t, int64(len(body)), m.BodySize())
	want := sha256.Sum256([]byte(body))
	h := sha256.New()
	_, err := io.Copy(h, m.Body())
	require.NoError(t, err)
	assert.Equal(t, want[:], h.Sum(nil))
}

func TestMessageReplaceAndClose(t *testing.T) {
	m, f1 := newFileMessage(t, "Subject: original\r\n\r\nold body\r\n")
	old := m.Reader()
	f2, size := spool(t, "Subject: filtered\r\nX-Virus-Scanned: clean\r\n\r\nnew body\r\n")
	require.NoError(t, m.Replace(f2, size, f2))
	assert.Equal(t, "filtered", m.Header.Get("Subject"))
	assert.Equal(t, "clean", m.Header.Get("X-Virus-Scanned"))
	assert.Equal(t, "new body\r\n", readAll(t, m.Body()))
	assert.Equal(t, "Subject: original\r\n\r\nold body\r\n", readAll(t, old), "the old storage stays readable until Close")

	// A failed Replace leaves the message as it was.
	bad := "X-Big: " + strings.Repeat("a", policy.MaxHeaderBytes) + "\r\n\r\n"
	err := m.Replace(strings.NewReader(bad), int64(len(bad)), nil)
	assert.ErrorIs(t, err, policy.ErrHeaderTooLarge)
	assert.Equal(t, "filtered", m.Header.Get("Subject"))

	require.NoError(t, m.Close())
	for _, f := range []*os.File{f1, f2} {
		_, err := f.Read(make([]byte, 1))
		assert.ErrorIs(t, err, os.ErrClosed, "Close closes every storage")
	}
	assert.NoError(t, m.Close(), "Close twice is harmless")
}

type errCloser struct{ err error }

func (c errCloser) Close() error { return c.err }

func TestMessageCloseErrors(t *testing.T) {
	raw := "Subject: x\r\n\r\n"
	e1, e2 := errors.New("first"), errors.New("second")
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), errCloser{e1})
	require.NoError(t, err)
	require.NoError(t, m.Replace(strings.NewReader(raw), int64(len(raw)), errCloser{e2}))
	err = m.Close()
	assert.ErrorIs(t, err, e1)
	assert.ErrorIs(t, err, e2)
}

func TestNewMessageHeaderTooLarge(t *testing.T) {
	raw := strings.Repeat("X-Field: "+strings.Repeat("v", 100)+"\r\n", policy.MaxHeaderBytes/100) + "\r\nbody"
	_, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	assert.ErrorIs(t, err, policy.ErrHeaderTooLarge)
}
