package policy_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func readHeader(t *testing.T, in string, max int) (*policy.Header, int64, bool, string) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(in), 64<<10)
	h, n, sep, err := policy.ReadHeader(br, max)
	require.NoError(t, err)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	return h, n, sep, string(rest)
}

func headerBytes(t *testing.T, h *policy.Header) string {
	t.Helper()
	var b bytes.Buffer
	n, err := h.WriteTo(&b)
	require.NoError(t, err)
	assert.Equal(t, h.Size(), n, "WriteTo count and Size agree")
	return b.String()
}

func TestReadHeader(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		names  []string
		values []string
		sep    bool
		body   string
	}{
		{
			name:   "simple CRLF",
			in:     "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
			names:  []string{"From", "Subject"},
			values: []string{"a@example.com", "hi"},
			sep:    true, body: "body\r\n",
		},
		{
			name:   "continuation lines",
			in:     "Subject: a\r\n  long\r\n\tvalue\r\nTo: b@example.com\r\n\r\nx",
			names:  []string{"Subject", "To"},
			values: []string{"a  long\tvalue", "b@example.com"},
			sep:    true, body: "x",
		},
		{
			name:   "LF only",
			in:     "Subject: a\n b\nX-A: 1\n\nbody\n",
			names:  []string{"Subject", "X-A"},
			values: []string{"a b", "1"},
			sep:    true, body: "body\n",
		},
		{
			name:   "no blank line, end of input",
			in:     "Subject: a\r\nX-A: 1\r\n",
			names:  []string{"Subject", "X-A"},
			values: []string{"a", "1"},
		},
		{
			name:   "last line without newline",
			in:     "Subject: a\r\nX-A: 1",
			names:  []string{"Subject", "X-A"},
			values: []string{"a", "1"},
		},
		{
			name:   "non-field line starts the body",
			in:     "Subject: a\r\nthis is body text\r\nmore\r\n",
			names:  []string{"Subject"},
			values: []string{"a"},
			body:   "this is body text\r\nmore\r\n",
		},
		{
			name: "mbox From_ line is not a field",
			in:   "From someone@example.com Mon Jan  1 00:00:00 2024\r\nSubject: a\r\n\r\n",
			body: "From someone@example.com Mon Jan  1 00:00:00 2024\r\nSubject: a\r\n\r\n",
		},
		{
			name: "leading continuation is body",
			in:   " indented\r\nSubject: a\r\n\r\n",
			body: " indented\r\nSubject: a\r\n\r\n",
		},
		{
			name: "empty header",
			in:   "\r\nbody",
			sep:  true, body: "body",
		},
		{
			name: "empty input",
			in:   "",
		},
		{
			name:   "space before colon and empty value",
			in:     "Subject : x\r\nX-Empty:\r\n\r\n",
			names:  []string{"Subject", "X-Empty"},
			values: []string{"x", ""},
			sep:    true,
		},
		{
			name: "colon first is not a field",
			in:   ": x\r\n\r\n",
			body: ": x\r\n\r\n",
		},
		{
			name:   "bare CR inside a line stays in the field",
			in:     "Subject: a\rb\r\n\r\n",
			names:  []string{"Subject"},
			values: []string{"a\rb"},
			sep:    true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, sep, rest := readHeader(t, tt.in, 0)
			var names, values []string
			for _, f := range h.Fields() {
				names = append(names, f.Name())
				values = append(values, f.Value())
			}
			assert.Equal(t, tt.names, names)
			assert.Equal(t, tt.values, values)
			assert.Equal(t, tt.sep, sep)
			assert.Equal(t, tt.body, rest)
			assert.Equal(t, int64(len(tt.in)-len(rest)), n, "n counts the consumed bytes")
			// Untouched fields keep their bytes: header + separator + rest is the input.
			assert.Equal(t, tt.in[:h.Size()], headerBytes(t, h))
			assert.Equal(t, tt.in, headerBytes(t, h)+tt.in[h.Size():n]+rest)
		})
	}
}

func TestReadHeaderTooLarge(t *testing.T) {
	tests := []struct {
		name string
		in   string
		max  int
		buf  int
	}{
		{"over max", "Subject: " + strings.Repeat("a", 200) + "\r\n\r\n", 100, 4096},
		{"many lines over max", strings.Repeat("X-A: 1\r\n", 100) + "\r\n", 500, 4096},
		// A line longer than the bufio buffer used to loop forever.
		{"line longer than buffer", "Subject: " + strings.Repeat("a", 5000) + "\r\n\r\nbody", 0, 4096},
		{"line longer than buffer without newline", strings.Repeat("a", 9000), 0, 4096},
		{"continuation longer than buffer", "Subject: a\r\n " + strings.Repeat("b", 5000) + "\r\n\r\n", 0, 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, _, _, err := policy.ReadHeader(bufio.NewReaderSize(strings.NewReader(tt.in), tt.buf), tt.max)
				done <- err
			}()
			select {
			case err := <-done:
				assert.ErrorIs(t, err, policy.ErrHeaderTooLarge)
			case <-time.After(10 * time.Second):
				t.Fatal("ReadHeader did not return")
			}
		})
	}
}

func TestReadHeaderWithinMax(t *testing.T) {
	in := strings.Repeat("X-A: 1\r\n", 10) + "\r\nbody"
	h, n, sep, rest := readHeader(t, in, len(in)-4)
	assert.Equal(t, 10, h.Len())
	assert.True(t, sep)
	assert.Equal(t, "body", rest)
	assert.Equal(t, int64(len(in)-4), n)
}

func parseHeader(t *testing.T, in string) *policy.Header {
	t.Helper()
	h, _, _, _ := readHeader(t, in, 0)
	return h
}

const sampleHeader = "Received: from a by b;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.org\r\n" +
	"subject: Hello   there\r\n" +
	"X-Tag: one\r\n" +
	"X-Tag: two\r\n"

func TestHeaderRead(t *testing.T) {
	h := parseHeader(t, sampleHeader+"\r\n")
	assert.Equal(t, 6, h.Len())
	assert.Equal(t, "Hello   there", h.Get("Subject"), "any case, inner spaces kept")
	assert.Equal(t, "Hello   there", h.Get("SUBJECT"))
	assert.Equal(t, "from a by b;\tMon, 1 Jan 2024 00:00:00 +0000", h.Get("received"), "unfolded")
	assert.Equal(t, "one", h.Get("X-Tag"), "first of several")
	assert.Equal(t, []string{"one", "two"}, h.Values("x-tag"))
	assert.Nil(t, h.Values("X-None"))
	assert.Equal(t, "", h.Get("X-None"))
	assert.True(t, h.Has("to"))
	assert.False(t, h.Has("Cc"))
	assert.Equal(t, "subject", h.Fields()[3].Name(), "name as written")
}

func TestHeaderEdits(t *testing.T) {
	tests := []struct {
		name string
		edit func(h *policy.Header)
		want string
	}{
		{"none", func(h *policy.Header) {}, sampleHeader},
		{
			"Add goes on top",
			func(h *policy.Header) { h.Add("X-Spam", "yes") },
			"X-Spam: yes\r\n" + sampleHeader,
		},
		{
			"Append goes at the end",
			func(h *policy.Header) { h.Append("X-Last", "1") },
			sampleHeader + "X-Last: 1\r\n",
		},
		{
			"AddRaw keeps bytes and adds CRLF",
			func(h *policy.Header) { h.AddRaw([]byte("DKIM-Signature: v=1;\r\n\tb=abc")) },
			"DKIM-Signature: v=1;\r\n\tb=abc\r\n" + sampleHeader,
		},
		{
			"AddRaw with LF ending gets CRLF",
			func(h *policy.Header) { h.AddRaw([]byte("X-Raw: 1\n")) },
			"X-Raw: 1\r\n" + sampleHeader,
		},
		{
			"Set replaces all at the first one's place",
			func(h *policy.Header) { h.Set("X-Tag", "three") },
			strings.Replace(sampleHeader, "X-Tag: one\r\nX-Tag: two\r\n", "X-Tag: three\r\n", 1),
		},
		{
			"Set of a missing field adds on top",
			func(h *policy.Header) { h.Set("X-New", "v") },
			"X-New: v\r\n" + sampleHeader,
		},
		{
			"Del removes all",
			func(h *policy.Header) { h.Del("X-TAG") },
			strings.Replace(sampleHeader, "X-Tag: one\r\nX-Tag: two\r\n", "", 1),
		},
		{
			"DelFunc",
			func(h *policy.Header) {
				h.DelFunc(func(f policy.Field) bool { return strings.HasPrefix(f.Name(), "X-") || f.Name() == "Received" })
			},
			"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nsubject: Hello   there\r\n",
		},
		{
			"CRLF injection in Add is neutralized",
			func(h *policy.Header) { h.Add("X-Note", "a\r\nBcc: evil@example.com") },
			"X-Note: a Bcc: evil@example.com\r\n" + sampleHeader,
		},
		{
			"bare LF and CR injection in Append",
			func(h *policy.Header) { h.Append("X-Note", "a\nBcc: x\rTo: y") },
			sampleHeader + "X-Note: a Bcc: x To: y\r\n",
		},
		{
			"injection through Set",
			func(h *policy.Header) { h.Set("Subject", "x\r\n\r\nbody injected") },
			strings.Replace(sampleHeader, "subject: Hello   there", "Subject: x body injected", 1),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := parseHeader(t, sampleHeader+"\r\n")
			tt.edit(h)
			assert.Equal(t, tt.want, headerBytes(t, h))
			// What was written parses back to the same fields.
			back := parseHeader(t, tt.want+"\r\n")
			assert.Equal(t, h.Len(), back.Len())
		})
	}
}

func TestHeaderDelCounts(t *testing.T) {
	h := parseHeader(t, sampleHeader)
	assert.Equal(t, 2, h.Del("x-tag"))
	assert.Equal(t, 0, h.Del("x-tag"))
	assert.Equal(t, 1, h.DelFunc(func(f policy.Field) bool { return f.Name() == "To" }))
	assert.Equal(t, 3, h.Len())
}

func TestHeaderFolding(t *testing.T) {
	words := strings.Fields(strings.Repeat("lorem ipsum dolor sit amet ", 20))
	value := strings.Join(words, " ")
	var h policy.Header
	h.Add("X-Long", value)
	raw := string(h.Fields()[0].Raw)
	lines := strings.Split(strings.TrimSuffix(raw, "\r\n"), "\r\n")
	require.Greater(t, len(lines), 3, "folded into several lines")
	for i, l := range lines {
		assert.LessOrEqual(t, len(l), 78, "line %d", i)
		if i > 0 {
			assert.True(t, strings.HasPrefix(l, " "), "continuation starts with a space")
		}
	}
	assert.Equal(t, value, h.Get("X-Long"), "unfolds back to the value")

	// A word longer than a line is not broken.
	long := strings.Repeat("x", 200)
	h.Append("X-Word", "a "+long+" b")
	assert.Equal(t, "a "+long+" b", h.Get("X-Word"))
	assert.Contains(t, string(h.Fields()[1].Raw), long)
}

func TestHeaderZeroAndClone(t *testing.T) {
	var h policy.Header
	assert.Equal(t, 0, h.Len())
	assert.Equal(t, int64(0), h.Size())
	assert.Equal(t, "", h.Get("X"))
	h.Set("X-A", "1")
	assert.Equal(t, "1", h.Get("X-A"))

	orig := parseHeader(t, sampleHeader)
	c := orig.Clone()
	c.Set("To", "someone@else.example")
	c.Del("Received")
	assert.Equal(t, sampleHeader, headerBytes(t, orig), "the original is untouched")
	assert.Equal(t, "someone@else.example", c.Get("To"))
}

func TestHeaderFieldsCopy(t *testing.T) {
	h := parseHeader(t, sampleHeader)
	fs := h.Fields()
	fs[0] = policy.Field{Raw: []byte("X-Changed: 1\r\n")}
	assert.Equal(t, sampleHeader, headerBytes(t, h), "the slice is a copy")
}

// TestHeaderFieldsApart: the fields ReadHeader returns share one buffer;
// an append to one field's bytes, folded fields included, leaves the
// others as they were, and so does a header larger than that buffer.
func TestHeaderFieldsApart(t *testing.T) {
	big := "X-Big: " + strings.Repeat("b", 5000) + "\r\n"
	for _, in := range []string{
		"A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\n",
		"A: 1\r\n" + big + "B: 2\r\n\tfolded\r\n" + big + "C: 3\r\n\r\n",
	} {
		h := parseHeader(t, in)
		fs := h.Fields()
		for i := range fs {
			want := h.Fields()
			fs[i].Raw = append(fs[i].Raw, "X-Overwrite: yes\r\n"...)
			for j, f := range h.Fields() {
				assert.Equal(t, string(want[j].Raw), string(f.Raw), "field %d after an append to field %d", j, i)
			}
		}
		assert.Equal(t, in[:len(in)-2], headerBytes(t, h))
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n <= 0 {
		return 0, io.ErrShortWrite
	}
	w.n--
	return len(p), nil
}

func TestHeaderWriteToError(t *testing.T) {
	h := parseHeader(t, sampleHeader)
	n, err := h.WriteTo(&failWriter{n: 1})
	assert.ErrorIs(t, err, io.ErrShortWrite)
	assert.Equal(t, int64(len("Received: from a by b;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n")), n)
}

func TestHeaderAppendAfterUnterminatedField(t *testing.T) {
	h := parseHeader(t, "Subject: a\r\nX-A: 1")
	h.Append("X-B", "2")
	assert.Equal(t, "Subject: a\r\nX-A: 1\r\nX-B: 2\r\n", headerBytes(t, h))
	assert.Equal(t, []string{"1"}, h.Values("X-A"))
	assert.Equal(t, "2", h.Get("X-B"))
}

func TestHeaderKeyInjection(t *testing.T) {
	tests := []struct{ key, want string }{
		{"Received-SPF", "Received-SPF: v\r\n"}, // kept as written, not "Received-Spf"
		{"x-spam", "x-spam: v\r\n"},
		{"  X-Spam ", "X-Spam: v\r\n"},
		{"X-A\r\nBcc", "X-ABcc: v\r\n"},
		{"X-A: 1\r\nBcc", "X-A1Bcc: v\r\n"},
		{"X-\x00A", "X-A: v\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			var h policy.Header
			h.Add(tt.key, "v")
			assert.Equal(t, tt.want, headerBytes(t, &h))
			assert.Equal(t, 1, parseHeader(t, headerBytes(t, &h)+"\r\n").Len())
		})
	}
}

func TestHeaderAddEmptyNamePanics(t *testing.T) {
	for _, key := range []string{"", " ", ":", "\r\n", "é"} {
		var h policy.Header
		assert.Panics(t, func() { h.Add(key, "v") }, "%q", key)
		assert.Equal(t, 0, h.Len())
	}
}

// Found by FuzzReadHeader: bytes that are not UTF-8 were turned into U+FFFD.
func TestHeaderAddKeepsEightBitBytes(t *testing.T) {
	var h policy.Header
	h.Add("X-Latin1", "caf\xe9 \xb0")
	assert.Equal(t, "X-Latin1: caf\xe9 \xb0\r\n", headerBytes(t, &h))
	assert.Equal(t, "caf\xe9 \xb0", h.Get("X-Latin1"))
}

func TestHeaderAddRawDoesNotWriteCallersArray(t *testing.T) {
	buf := make([]byte, 0, 64)
	buf = append(buf, "X-Raw: 1\n"...)
	spare := buf[:cap(buf)]
	copy(spare[len(buf):], "untouched")
	var h policy.Header
	h.AddRaw(buf)
	assert.Equal(t, "X-Raw: 1\n", string(buf))
	assert.Equal(t, "untouched", string(spare[len(buf):len(buf)+9]))
	assert.Equal(t, "X-Raw: 1\r\n", headerBytes(t, &h))
}

type errAfter struct {
	data []byte
	err  error
}

func (r *errAfter) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReadHeaderReadError(t *testing.T) {
	eio := errors.New("input/output error")
	_, _, _, err := policy.ReadHeader(bufio.NewReader(&errAfter{data: []byte("Subject: a\r\nTo: b"), err: eio}), 0)
	assert.ErrorIs(t, err, eio, "a read error is not the end of the header")

	h, _, sep, err := policy.ReadHeader(bufio.NewReader(&errAfter{data: []byte("Subject: a\r\nTo: b"), err: io.EOF}), 0)
	require.NoError(t, err)
	assert.False(t, sep)
	assert.Equal(t, 2, h.Len())
}
