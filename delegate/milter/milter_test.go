package milter

import (
	"testing"

	gomilter "github.com/d--j/go-milter"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStages: every stage reaches the milter, in order, with its
// arguments and macros, over TCP and a Unix socket; the message as the
// milter saw it is the one queued.
func TestStages(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := startFake(t, network, nil)
			m := newMilter(t, f, nil)
			h := startServer(t, m)
			res := h.send("alice@sender.example", []string{"bob@rcpt.example", "carol@rcpt.example"}, testMessage)
			require.NoError(t, res.data)
			f.waitClosed(t, 0)

			ev := f.Events()
			require.GreaterOrEqual(t, len(ev), 8, "%q", ev)
			assert.Equal(t, "connect [127.0.0.1] tcp4 127.0.0.1", ev[0], "an unverified client is named by its address, as Postfix does")
			assert.Equal(t, "helo client.test.example", ev[1])
			assert.Equal(t, "mail <alice@sender.example> BODY=8BITMIME", ev[2]) // go-smtp's client sends BODY
			assert.Equal(t, "rcpt <bob@rcpt.example>", ev[3])
			assert.Equal(t, "rcpt <carol@rcpt.example>", ev[4])
			assert.Equal(t, []string{"data", "eoh", "eom"}, ev[5:8])

			q := h.queue.all()
			require.Len(t, q, 1)
			msgs := f.Messages()
			require.Len(t, msgs, 1)
			// The milter saw the header as the client sent it (not our
			// Received field, as Postfix), values without the space after
			// the colon, LF line ends, the body as is.
			assert.Equal(t, "From:<alice@sender.example>\nTo:<bob@rcpt.example>\nSubject:hello\n\nHi Bob.\r\n", msgs[0])

			assert.Equal(t, "mx.test.example", f.Macro("connect", "j"))
			assert.Equal(t, "127.0.0.1", f.Macro("connect", "{client_addr}"))
			assert.Equal(t, "unknown", f.Macro("connect", "{client_name}"))
			assert.Equal(t, "mtakit", f.Macro("connect", "{daemon_name}"))
			assert.Equal(t, "127.0.0.1", f.Macro("connect", "{daemon_addr}"))
			assert.NotEmpty(t, f.Macro("mail", "i"))
			assert.Equal(t, "alice@sender.example", f.Macro("mail", "{mail_addr}"))
			assert.Equal(t, "sender.example", f.Macro("mail", "{mail_host}"))
			assert.Equal(t, "carol@rcpt.example", f.Macro("rcpt", "{rcpt_addr}"))
			assert.Equal(t, f.Macro("mail", "i"), f.Macro("eom", "i"))
			assert.Contains(t, q[0].raw, f.Macro("eom", "i"), "the queue ID is the one in our Received field")
		})
	}
}

func TestParseReply(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"550 5.7.1 Spam message rejected", "550 5.7.1 Spam message rejected", true},
		{"554 Go away", "554 5.7.1 Go away", true},
		{"451 4.7.1 Try again later", "451 4.7.1 Try again later", true},
		{"550-5.7.1 first\r\n550 5.7.1 second", "550 5.7.1 first second", true},
		{"550 4.7.1 mismatched class", "550 5.7.1 4.7.1 mismatched class", true},
		{"550", "550 5.7.1 Command rejected", true},
		{"250 ok", "", false},
		{"xyz", "", false},
	} {
		r, ok := parseReply(c.in)
		assert.Equal(t, c.ok, ok, c.in)
		if ok {
			assert.Equal(t, c.want, r.String(), c.in)
		}
	}
	_ = gomilter.RespContinue
}
