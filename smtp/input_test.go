package smtp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestFilterFollowsPipelining: command lines sent in one packet with a
// message body or a BDAT chunk are each seen in their turn; the content of
// a message is never taken for commands (its "RCPT TO:<postmaster>" and
// "STARTTLS" lines stay as they were) and the commands after it are.
func TestFilterFollowsPipelining(t *testing.T) {
	content := "Subject: commands in the body\r\n\r\nRCPT TO:<postmaster>\r\nSTARTTLS\r\nBDAT 5\r\n"
	for _, tc := range []struct {
		name    string
		packets []string // each sent at once, after the replies to the one before
		replies [][]int
	}{
		{
			name: "DATA",
			packets: []string{
				"MAIL FROM:<a@client.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n",
				content + ".\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n",
				content + ".\r\n",
			},
			replies: [][]int{{250, 250, 354}, {250, 250, 250, 354}, {250}},
		},
		{
			name: "BDAT",
			packets: []string{
				"MAIL FROM:<a@client.test>\r\nRCPT TO:<postmaster>\r\n" + fmt.Sprintf("BDAT %d LAST\r\n", len(content)) + content +
					"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n" + fmt.Sprintf("BDAT %d\r\n", len(content)) + content + "BDAT 0 LAST\r\n",
			},
			replies: [][]int{{250, 250, 250, 250, 250, 250, 250}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, Config{})
			c := dialRaw(t, h.addr())
			c.reply()
			c.expect("EHLO client.test", 250)
			for i, p := range tc.packets {
				c.send(p)
				for _, want := range tc.replies[i] {
					code, text := c.reply()
					require.Equal(t, want, code, text)
				}
			}
			msgs := h.queue.all()
			require.Len(t, msgs, 2)
			for _, m := range msgs {
				assert.Equal(t, []string{"postmaster@mx.test"}, m.Rcpts)
				assert.True(t, strings.HasSuffix(m.Data, "\r\n\r\n"+strings.SplitN(content, "\r\n\r\n", 2)[1]), "content unchanged: %q", m.Data)
			}
		})
	}
}

// TestAuthResponseIsNoCommand: a line answering AUTH's 334 is not taken for
// a command, whatever it looks like.
func TestAuthResponseIsNoCommand(t *testing.T) {
	h := start(t, Config{Authenticator: users, TLSConfig: testTLS(t)},
		Listener{Name: "submission", Role: RoleSubmission, AllowInsecureAuth: true})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("AUTH LOGIN", 334)
	c.expect("STARTTLS", 334) // the user name, in base64
	c.expect("*", 501)
	c.expect("AUTH PLAIN", 334)
	c.expect("RCPT TO:<postmaster>", 454) // not base64
	c.expect("STARTTLS STARTTLS", 501)
}

// TestPostmasterLongLine: the rewritten line may be longer than what
// go-smtp asks for in one read.
func TestPostmasterLongLine(t *testing.T) {
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll)
	long := strings.Repeat("d", 60) + "." + strings.Repeat("e", 60) + "." + strings.Repeat("f", 60) + ".test"
	h := start(t, Config{Chain: chain, PostmasterDomain: long, EnableDSN: true})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("EHLO client.test", 250)
	c.expect("MAIL FROM:<a@client.test>", 250)
	c.expect("RCPT TO:<postmaster> NOTIFY=FAILURE,DELAY ORCPT=rfc822;postmaster", 250)
	c.expect("DATA", 354)
	c.expect(simpleBody+".", 250)
	msgs := h.queue.all()
	require.Len(t, msgs, 1)
	assert.Equal(t, []string{"postmaster@" + long}, msgs[0].Rcpts)
}

// filterConn is a conn reading from a pipe, as go-smtp's.
func filterConn(t testing.TB, input []byte, seg int) *conn {
	ours, peer := net.Pipe()
	t.Cleanup(func() { ours.Close(); peer.Close() })
	ours.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		for p := input; len(p) > 0; {
			n := min(len(p), seg)
			if _, err := peer.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
		peer.Close()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &conn{Conn: ours, srv: &Server{postmaster: "mx.test"}, ctx: ctx}
}

// FuzzCommandFilter: whatever the segmentation of the input and the sizes
// of the reads, the filter hands over every byte of the command lines in
// order, with only the bare postmaster rewritten, and one line per read.
func FuzzCommandFilter(f *testing.F) {
	f.Add([]byte("EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<b@c>\r\nQUIT\r\n"), uint8(3), uint8(7))
	f.Add([]byte("rcpt to: <PostMaster> NOTIFY=NEVER\r\nNOOP"), uint8(1), uint8(1))
	f.Add([]byte("RCPT TO:<postmaster\r\nRCPT TO:<postmaster>\n\n\r\n"), uint8(200), uint8(2))
	f.Fuzz(func(t *testing.T, input []byte, seg, readSize uint8) {
		var want []byte
		for rest := input; len(rest) > 0; {
			line := rest
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				line = rest[:i+1]
			}
			rest = rest[len(line):]
			if hasPrefixFold(line, "STARTTLS") || hasPrefixFold(line, "BDAT ") {
				return // other states; see the socket tests
			}
			if line[len(line)-1] == '\n' && len(line) <= readAheadSize {
				line = (&conn{srv: &Server{postmaster: "mx.test"}}).rcpt(line)
			}
			want = append(want, line...)
		}
		c := filterConn(t, input, int(seg)+1)
		var got []byte
		p := make([]byte, int(readSize)+1)
		for {
			n, err := c.Read(p)
			if i := bytes.IndexByte(p[:n], '\n'); i >= 0 && i < n-1 && !c.longLine {
				t.Fatalf("more than one line in one read: %q", p[:n])
			}
			got = append(got, p[:n]...)
			if err != nil {
				require.ErrorIs(t, err, io.EOF)
				break
			}
		}
		require.Equal(t, string(want), string(got))
	})
}

// FuzzRcptRewrite: a rewritten RCPT line is one line naming
// postmaster@<domain>, with the client's parameters after it; any other
// line is left alone.
func FuzzRcptRewrite(f *testing.F) {
	for _, s := range []string{"RCPT TO:<postmaster>\r\n", "RCPT TO: <POSTMASTER> NOTIFY=NEVER\r\n", "RCPT TO:<postmaster>x\r\n", "RCPT TO:<postmaster@a.b>\r\n", "RCPT  to:<postmaster>\r\r\n"} {
		f.Add([]byte(s))
	}
	c := &conn{srv: &Server{postmaster: "mx.test"}}
	f.Fuzz(func(t *testing.T, line []byte) {
		if !hasPrefixFold(line, "RCPT ") || bytes.Contains(bytes.TrimSuffix(line, []byte("\n")), []byte("\n")) {
			return // the filter hands over lines that end at their first LF
		}
		out := c.rcpt(line)
		if bytes.Equal(out, line) {
			return
		}
		const head = "RCPT TO:<postmaster@mx.test>"
		require.True(t, bytes.HasPrefix(out, []byte(head)), "%q", out)
		require.True(t, bytes.HasSuffix(out, []byte("\r\n")), "%q", out)
		params := out[len(head) : len(out)-2]
		require.False(t, bytes.Contains(params, []byte("\n")), "one line: %q", out)
		require.True(t, len(params) == 0 || params[0] == ' ', "%q", out)
		require.True(t, bytes.Contains(bytes.ToLower(line), bytes.ToLower(append([]byte("<postmaster>"), params...))), "parameters kept: %q -> %q", line, out)
	})
}
