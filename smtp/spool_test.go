package smtp

import (
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSpoolReuse: one connection's messages share its spool file, each
// written over the one before; a shorter message must not carry the end
// of a longer one, before or after the file is cut back (large message).
func TestSpoolReuse(t *testing.T) {
	h := start(t, Config{Limits: Limits{MaxMessageBytes: 4 << 20}})
	c, err := gosmtp.Dial(h.addr())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))

	bodies := []string{
		strings.Repeat("a long line of the first message\r\n", 2000),
		"short\r\n",
		strings.Repeat("b", 998) + "\r\n" + strings.Repeat("c", 500) + "\r\n",
		strings.Repeat(strings.Repeat("d", 100)+"\r\n", (spoolTruncateAbove/102)+100), // over the bound
		"after the large one\r\n",
		"",
	}
	for i, body := range bodies {
		msg := "Subject: m" + string(rune('0'+i)) + "\r\n\r\n" + body
		require.NoError(t, c.SendMail("a@example.org", []string{"b@example.com"}, strings.NewReader(msg)), "message %d", i)
	}
	require.NoError(t, c.Quit())

	got := h.queue.all()
	require.Len(t, got, len(bodies))
	for i, s := range got {
		at := strings.Index(s.Data, "Subject: ") // our Received comes first
		require.GreaterOrEqual(t, at, 0)
		data := s.Data[at:]
		assert.Equal(t, "Subject: m"+string(rune('0'+i))+"\r\n\r\n"+bodies[i], data, "message %d", i)
	}
}

// TestSpoolBuffer: a message that fits in the spooler's buffer is read
// back from memory and makes no spool file; messages around the buffer's
// size, on one connection, come out whole either way.
func TestSpoolBuffer(t *testing.T) {
	h := start(t, Config{})
	c, err := gosmtp.Dial(h.addr())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))

	// spoolSize is the size of the connection's spool file, -1 if it
	// has none.
	spoolSize := func() int64 {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		require.Len(t, h.srv.conns, 1)
		for cn := range h.srv.conns {
			cn.mu.Lock()
			defer cn.mu.Unlock()
			if cn.spool == nil {
				return -1
			}
			st, err := cn.spool.Stat()
			require.NoError(t, err)
			return st.Size()
		}
		return -1
	}
	send := func(body string) {
		t.Helper()
		msg := "Subject: buffer\r\n\r\n" + body
		require.NoError(t, c.SendMail("a@example.org", []string{"b@example.com"}, strings.NewReader(msg)))
	}

	send("small\r\n")
	assert.EqualValues(t, -1, spoolSize(), "a small message stays in memory, with no spool file")

	line := strings.Repeat("x", 98) + "\r\n"
	var bodies []string
	for _, n := range []int{spoolBufferSize - 600, spoolBufferSize - 300, spoolBufferSize - 200, spoolBufferSize, spoolBufferSize + 1, 3 * spoolBufferSize} {
		b := strings.Repeat(line, n/len(line)) + strings.Repeat("y", n%len(line)) + "\r\n"
		bodies = append(bodies, b)
		send(b)
	}
	assert.Positive(t, spoolSize(), "a large message goes to the file")
	bodies = append(bodies, "small again\r\n")
	send("small again\r\n")

	got := h.queue.all()
	require.Len(t, got, 1+len(bodies))
	for i, s := range got[1:] {
		at := strings.Index(s.Data, "Subject: ")
		require.GreaterOrEqual(t, at, 0)
		assert.Equal(t, "Subject: buffer\r\n\r\n"+bodies[i], s.Data[at:], "message %d", i)
	}
}
