package smtp

import (
	"errors"
	"io"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refBody is go-smtp's data reader, a byte at a time (data.go of
// go-smtp), but for one byte: a CR after a line's leading dot, when no LF
// follows, is given back rather than dropped. It returns the body and the
// index just past the end-of-data line (-1: none).
func refBody(in []byte) ([]byte, int) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	var out []byte
	st := beginLine
	for i, c := range in {
		switch st {
		case beginLine:
			if c == '.' {
				st = dot
				continue
			}
			if c == '\r' {
				st = cr
				break
			}
			st = data
		case dot:
			if c == '\r' {
				st = dotCR
				continue
			}
			st = data
		case dotCR:
			if c == '\n' {
				return out, i + 1
			}
			out = append(out, '\r')
			st = data
		case cr:
			if c == '\n' {
				st = beginLine
				break
			}
			st = data
		case data:
			if c == '\r' {
				st = cr
			}
		}
		out = append(out, c)
	}
	return out, -1
}

// refLongLine tells whether go-smtp's lineLimitReader would fail on in
// (counting from 1, the LF of the DATA command), byte by byte.
func refLongLine(in []byte, limit int) bool {
	cur := 1
	for _, c := range in {
		if c == '\n' {
			cur = 0
		}
		cur++
		if limit > 0 && cur > limit {
			return true
		}
	}
	return false
}

// readBody reads a body through a bodyReader on a conn fed input in
// segments of seg bytes, with reads of readSize bytes; it returns the body,
// the reader's error (nil at the end of data) and what the connection
// gives after (the bytes following the end of data).
func readBody(t testing.TB, input []byte, seg, readSize, lineMax int, max int64) (body []byte, err error, after []byte) {
	c := filterConn(t, input, seg)
	c.srv.limits.MaxLineLength = lineMax
	c.srv.limits.MaxMessageBytes = max
	c.body = true
	r := newBodyReader(c)
	p := make([]byte, readSize)
	for {
		n, rerr := r.Read(p)
		body = append(body, p[:n]...)
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	if err != nil {
		return body, err, nil
	}
	require.False(t, c.body, "the filter left the body")
	for {
		n, rerr := c.readRaw(p)
		after = append(after, p[:n]...)
		if rerr != nil {
			break
		}
	}
	return body, nil, after
}

// FuzzBodyReader: whatever the segmentation of the input and the size of
// the reads, the body reader hands over what go-smtp's data reader would
// (but a CR after a leading dot), ends where bodyEnd (go-smtp) ends, leaves
// every byte after the end for the filter, and fails on a long line and a
// big body where go-smtp would.
func FuzzBodyReader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n..dot\r\n.\r\nMAIL FROM:<>\r\n"), uint8(3), uint8(7), uint16(0), uint16(0))
	f.Add([]byte("a\r\n.\rb\r\n.\r\n"), uint8(1), uint8(0), uint16(5), uint16(0))
	f.Add([]byte("\r\n.\r\n"), uint8(200), uint8(2), uint16(0), uint16(1))
	f.Add([]byte(".\r\n"), uint8(0), uint8(0), uint16(0), uint16(0))
	f.Add([]byte("abc\n.\n\r\n.\r\r\n.\r\n"), uint8(4), uint8(1), uint16(4), uint16(3))
	f.Fuzz(func(t *testing.T, input []byte, seg, readSize uint8, lineMax, max uint16) {
		want, end := refBody(input)
		raw := input
		if end >= 0 {
			raw = input[:end]
		}
		long := refLongLine(raw, int(lineMax))
		big := max > 0 && len(want) > int(max)
		body, err, after := readBody(t, input, int(seg)+1, int(readSize)+2, int(lineMax), int64(max))
		switch {
		case errors.Is(err, gosmtp.ErrTooLongLine):
			require.True(t, long, "a long line")
		case errors.Is(err, gosmtp.ErrDataTooLarge):
			require.True(t, big, "too big")
		case long || big:
			t.Fatalf("error %v; long line %v, too big %v", err, long, big)
		case end < 0:
			require.ErrorIs(t, err, io.ErrUnexpectedEOF)
			require.Equal(t, string(want), string(body))
		default:
			require.NoError(t, err)
			require.Equal(t, string(want), string(body))
			require.Equal(t, string(input[end:]), string(after))
			require.Equal(t, end, (&conn{}).bodyEnd(input), "ends where go-smtp ends")
		}
	})
}

// TestBodyThroughServer: bodies read by the server are those the client
// meant: dot-stuffing removed, whatever the packets, and the commands after
// the end of data run; a body of exactly MaxMessageBytes is taken, one
// byte more refused and the session goes on.
func TestBodyThroughServer(t *testing.T) {
	const max = 400
	h := start(t, Config{Limits: Limits{MaxMessageBytes: max}})
	exact := "Subject: x\r\n\r\n" + strings.Repeat("z", max-len("Subject: x\r\n\r\n")-2) + "\r\n"
	require.Len(t, exact, max)
	for _, tc := range []struct {
		name    string
		packets []string
		want    string // the body queued; "" for 552
	}{
		{"stuffed dots", []string{"Subject: x\r\n\r\n..\r\n...x\r\n. \r\n.\r\n"}, "Subject: x\r\n\r\n.\r\n..x\r\n \r\n"},
		{"end split", []string{"Subject: x\r\n\r\nbody\r", "\n", ".", "\r", "\n"}, "Subject: x\r\n\r\nbody\r\n"},
		{"dot split", []string{"Subject: x\r\n\r\n", ".", ".y\r\n.\r\n"}, "Subject: x\r\n\r\n.y\r\n"},
		{"exactly the limit", []string{exact + ".\r\n"}, exact},
		{"one byte over", []string{exact[:max-2] + "z\r\n.\r\n"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.queue.all())
			c := begin(t, h.addr())
			c.expect("DATA", 354)
			for _, p := range tc.packets {
				c.send(p)
			}
			code, text := c.reply()
			if tc.want == "" {
				require.Equal(t, 552, code, text)
				assert.Len(t, h.queue.all(), before)
			} else {
				require.Equal(t, 250, code, text)
				msgs := h.queue.all()
				require.Len(t, msgs, before+1)
				_, body, ok := strings.Cut(msgs[before].Data, "\r\nSubject: x\r\n")
				require.True(t, ok, msgs[before].Data)
				assert.Equal(t, tc.want, "Subject: x\r\n"+body)
			}
			// The session goes on.
			c.expect("MAIL FROM:<s@client.test>", 250)
			c.expect("RCPT TO:<a@mx.test>", 250)
			c.expect("DATA", 354)
			c.send(simpleBody + ".\r\nRSET\r\n")
			code, text = c.reply()
			require.Equal(t, 250, code, text)
			code, text = c.reply()
			require.Equal(t, 250, code, text)
			c.expect("QUIT", 221)
		})
	}
}

func BenchmarkBodyReader(b *testing.B) {
	line := strings.Repeat("x", 76) + "\r\n"
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(line, 100<<10/len(line)) + ".\r\n")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		c := filterConn(b, body, 64<<10)
		c.srv.limits.MaxLineLength = 2000
		c.body = true
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{newBodyReader(c)}, make([]byte, 32<<10))
		if err != nil || n != int64(len(body)-3) {
			b.Fatal(n, err)
		}
	}
}
