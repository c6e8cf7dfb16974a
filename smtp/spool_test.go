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
