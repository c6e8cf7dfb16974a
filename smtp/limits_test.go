package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// begin opens a raw session up to an accepted RCPT.
func begin(t *testing.T, addr string) *rawConn {
	c := dialRaw(t, addr)
	code, text := c.reply()
	require.Equal(t, 220, code, text)
	c.expect("EHLO client.test", 250)
	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	return c
}

// normalClient proves the server still serves after abuse.
func normalClient(t *testing.T, h *harness) {
	t.Helper()
	before := len(h.queue.all())
	require.NoError(t, sendMail(t, h.addr(), "s@client.test", []string{"a@mx.test"}, simpleBody))
	assert.Len(t, h.queue.all(), before+1)
}

func TestMessageSizeLimit(t *testing.T) {
	h := start(t, Config{Limits: Limits{MaxMessageBytes: 1000}})
	c := begin(t, h.addr())
	ehloSize := ""
	c.expect("DATA", 354)
	c.send("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 50) + ".\r\n")
	code, text := c.reply()
	assert.Equal(t, 552, code)
	assert.Contains(t, text, "552 5.3.4")
	assert.Empty(t, h.queue.all(), "nothing queued")
	// The session goes on: a small message is accepted.
	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, text = c.reply()
	assert.Equal(t, 250, code, text)
	// SIZE= over the limit is refused at MAIL.
	assert.Contains(t, c.expect("MAIL FROM:<s@client.test> SIZE=5000", 552), "5.3.4")
	_ = ehloSize
	assert.Len(t, h.queue.all(), 1)
}

func TestRecipientLimit(t *testing.T) {
	h := start(t, Config{Limits: Limits{MaxRecipients: 3}})
	c := begin(t, h.addr())
	c.expect("RCPT TO:<b@mx.test>", 250)
	c.expect("RCPT TO:<c@mx.test>", 250)
	assert.Contains(t, c.expect("RCPT TO:<d@mx.test>", 452), "452 4.5.3")
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, _ := c.reply()
	require.Equal(t, 250, code)
	require.Len(t, h.queue.all(), 1)
	assert.Len(t, h.queue.all()[0].Rcpts, 3)
}

// TestManyRecipients pipelines 10,000 RCPT commands: the recipients over
// the limit get 452 (which does not count as an error) and the session
// stays usable.
func TestManyRecipients(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	h := start(t, Config{})
	c := begin(t, h.addr())
	const n = 10000
	go func() {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "RCPT TO:<r%d@mx.test>\r\n", i)
		}
		c.Conn.Write([]byte(b.String()))
	}()
	counts := map[int]int{}
	for range n {
		code, _ := c.reply()
		counts[code]++
		if code <= 0 {
			break
		}
	}
	assert.Equal(t, map[int]int{250: 99, 452: n - 99}, counts)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, _ := c.reply()
	require.Equal(t, 250, code)
	assert.Len(t, h.queue.all()[0].Rcpts, 100)
	normalClient(t, h)
}

func TestLineLengthLimit(t *testing.T) {
	h := start(t, Config{Limits: Limits{MaxLineLength: 200}})
	t.Run("command", func(t *testing.T) {
		c := dialRaw(t, h.addr())
		c.reply()
		code, text := c.cmd("EHLO " + strings.Repeat("a", 300))
		assert.Equal(t, 500, code, text)
		assert.True(t, c.closed())
	})
	t.Run("data", func(t *testing.T) {
		c := begin(t, h.addr())
		c.expect("DATA", 354)
		c.send("Subject: x\r\n\r\n" + strings.Repeat("y", 400) + "\r\n.\r\n")
		code, text := c.reply()
		assert.Equal(t, 500, code, text)
		assert.True(t, c.closed())
	})
	assert.Empty(t, h.queue.all())
	normalClient(t, h)
}

func TestCommandTimeout(t *testing.T) {
	h := start(t, Config{Limits: Limits{CommandTimeout: 300 * time.Millisecond}})
	t.Run("idle", func(t *testing.T) {
		c := dialRaw(t, h.addr())
		c.reply()
		code, text := c.reply()
		assert.Equal(t, 421, code, text)
		assert.Contains(t, text, "4.4.2")
		assert.True(t, c.closed())
	})
	t.Run("slowloris", func(t *testing.T) {
		c := dialRaw(t, h.addr())
		c.reply()
		done := make(chan struct{})
		go func() { // one byte every 50ms: never a complete line in time
			defer close(done)
			for _, b := range []byte("EHLO slow.client.test.example\r\n") {
				if _, err := c.Conn.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		code, text := c.reply()
		assert.Equal(t, 421, code, text)
		assert.True(t, c.closed())
		<-done
	})
	t.Run("data", func(t *testing.T) {
		h := start(t, Config{Limits: Limits{DataTimeout: 300 * time.Millisecond}})
		c := begin(t, h.addr())
		c.expect("DATA", 354)
		c.send("Subject: x\r\n\r\nstalled")
		code, text := c.reply()
		assert.Equal(t, 421, code, text)
		assert.True(t, c.closed())
		assert.Empty(t, h.queue.all())
	})
	normalClient(t, h)
}

func TestErrorLimit(t *testing.T) {
	t.Run("sequence errors", func(t *testing.T) {
		h := start(t, Config{Limits: Limits{MaxErrors: 3}})
		c := dialRaw(t, h.addr())
		c.reply()
		c.expect("EHLO client.test", 250)
		c.expect("RCPT TO:<a@mx.test>", 502)
		c.expect("DATA", 502)
		code, text := c.cmd("RCPT TO:<a@mx.test>")
		assert.Equal(t, 502, code)
		code, text = c.reply()
		assert.Equal(t, 421, code, text)
		assert.Contains(t, text, "4.7.0")
		assert.True(t, c.closed())
		normalClient(t, h)
	})
	t.Run("unknown commands", func(t *testing.T) {
		h := start(t, Config{}) // default 10; go-smtp closes after its 4th
		c := dialRaw(t, h.addr())
		c.reply()
		closed := false
		for i := range 500 {
			code, _ := c.cmd(fmt.Sprintf("XYZZY%d", i))
			if code <= 0 || code == 421 {
				closed = true
				break
			}
		}
		assert.True(t, closed || c.closed(), "disconnected before 500 unknown commands")
		normalClient(t, h)
	})
	t.Run("failed auth, implicit TLS", func(t *testing.T) {
		h := start(t, Config{Limits: Limits{MaxErrors: 3}, Authenticator: users, TLSConfig: testTLS(t)},
			Listener{Name: "smtps", Role: RoleImplicitTLS})
		c := dialTLSRaw(t, h.addrs["smtps"])
		c.reply()
		c.expect("EHLO client.test", 250)
		bad := "AUTH PLAIN " + b64("\x00alice\x00wrong")
		c.expect(bad, 535)
		c.expect(bad, 535)
		c.expect(bad, 535)
		code, text := c.reply()
		assert.Equal(t, 421, code, text)
		assert.True(t, c.closed())
	})
	t.Run("failed auth after STARTTLS", func(t *testing.T) {
		h := start(t, Config{Limits: Limits{MaxErrors: 3}, Authenticator: users, TLSConfig: testTLS(t)},
			Listener{Name: "submission", Role: RoleSubmission})
		c := dialRaw(t, h.addrs["submission"])
		c.reply()
		c.expect("EHLO client.test", 250)
		c.expect("STARTTLS", 220)
		tc := tls.Client(c.Conn, clientTLS())
		require.NoError(t, tc.Handshake())
		tr := &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
		tr.expect("EHLO client.test", 250)
		bad := "AUTH PLAIN " + b64("\x00alice\x00wrong")
		tr.expect(bad, 535)
		tr.expect(bad, 535)
		tr.expect(bad, 535)
		code, text := tr.reply()
		assert.Equal(t, 421, code, text)
		assert.Contains(t, text, "4.7.0")
		assert.True(t, tr.closed())
	})
}

func TestConnectionLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits Limits
	}{
		{"per IP", Limits{MaxConnectionsPerIP: 2}},
		{"total", Limits{MaxConnections: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, Config{Limits: tc.limits})
			a, b := dialRaw(t, h.addr()), dialRaw(t, h.addr())
			for _, c := range []*rawConn{a, b} {
				code, _ := c.reply()
				require.Equal(t, 220, code)
			}
			over := dialRaw(t, h.addr())
			code, text := over.reply()
			assert.Equal(t, 421, code, text)
			assert.Contains(t, text, "421 4.7.0 Too many connections")
			assert.True(t, over.closed())
			// Freeing a slot lets a new client in.
			a.expect("QUIT", 221)
			waitFor(t, func() bool {
				h.srv.mu.Lock()
				defer h.srv.mu.Unlock()
				return h.srv.total == 1
			})
			normalClient(t, h)
		})
	}
}

// TestSmuggling sends every non-standard end-of-data sequence followed by
// a smuggled transaction: never is a second message accepted, the smuggled
// commands never run, and a normal client is served after. Every variant
// with a bare CR or LF is refused with 550 5.6.11, "\r\n.\r" + text
// too: the body reader gives back the CR after a line's leading dot
// (go-smtp's own reader drops "." + CR when no LF follows, so the message
// would have been taken with the text as data).
func TestSmuggling(t *testing.T) {
	h := start(t, Config{})
	variants := []string{"\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\r\n.\r\r\n", "\r\r\n", "\n\n"}
	for _, v := range variants {
		for _, smuggle := range []bool{true, false} {
			t.Run(fmt.Sprintf("%q smuggle=%v", v, smuggle), func(t *testing.T) {
				before := len(h.queue.all())
				c := begin(t, h.addr())
				c.expect("DATA", 354)
				body := "Subject: first\r\n\r\nfirst" + v
				if smuggle {
					body += "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
				} else {
					body += "more\r\n.\r\n"
				}
				c.send(body)
				code, text := c.reply()
				// Exactly one reply: the next is QUIT's.
				c.expect("QUIT", 221)
				msgs := h.queue.all()[before:]
				assert.Equal(t, 550, code, text)
				assert.True(t, strings.HasPrefix(text, "550 5.6.11 "), text)
				assert.Empty(t, msgs)
			})
		}
	}
	normalClient(t, h)
	for _, m := range h.queue.all() {
		assert.NotEqual(t, "evil@attacker.test", m.From)
		assert.NotContains(t, m.Rcpts, "victim@mx.test")
	}
}

func TestNUL(t *testing.T) {
	h := start(t, Config{})
	c := begin(t, h.addr())
	c.expect("DATA", 354)
	c.send("Subject: x\r\n\r\nnul\x00here\r\n.\r\n")
	code, text := c.reply()
	assert.Equal(t, 550, code, text)
	assert.Contains(t, text, "550 5.6.0")
	assert.Empty(t, h.queue.all())
	normalClient(t, h)
}

func TestEightBitWithout8BITMIME(t *testing.T) {
	h := start(t, Config{})
	c := begin(t, h.addr())
	c.expect("DATA", 354)
	c.send("Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n.\r\n")
	code, text := c.reply()
	assert.Equal(t, 250, code, text)
	require.Len(t, h.queue.all(), 1)
	assert.Contains(t, h.queue.all()[0].Data, "na\xc3\xafve")
}

func TestEnqueueFailure(t *testing.T) {
	h := start(t, Config{})
	h.queue.fail = errors.New("disk on fire")
	c := begin(t, h.addr())
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, text := c.reply()
	assert.Equal(t, 451, code)
	assert.Equal(t, "451 4.3.0 Internal error, try again later", text)
	assert.Empty(t, h.queue.all())
}

// TestSpoolFailure: NewServer refuses a SpoolDir it cannot create a file
// in; one that goes away later fails only the messages that need it
// (over the spooler's buffer) with a 451, and the session goes on.
func TestSpoolFailure(t *testing.T) {
	_, err := NewServer(Config{Chain: policy.NewChain(), Queue: discardQueue{},
		SpoolDir: filepath.Join(t.TempDir(), "missing")})
	require.ErrorIs(t, err, ErrConfig)
	assert.Contains(t, err.Error(), "SpoolDir")

	dir := filepath.Join(t.TempDir(), "spool")
	require.NoError(t, os.Mkdir(dir, 0o700))
	h := start(t, Config{SpoolDir: dir})
	require.NoError(t, os.Remove(dir))

	c := begin(t, h.addr())
	c.expect("DATA", 354)
	c.send("Subject: large\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 2*spoolBufferSize/100) + ".\r\n")
	code, text := c.reply()
	assert.Equal(t, 451, code, text)
	assert.Contains(t, text, "4.3.0")
	assert.Empty(t, h.queue.all())

	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, text = c.reply()
	assert.Equal(t, 250, code, "a small message needs no spool file: %s", text)
	assert.Len(t, h.queue.all(), 1)
}

// TestShutdownDuringData stops the server while a client is sending a
// message: that message gets its 250 and is queued, the idle client is
// disconnected and no new client gets in.
func TestShutdownDuringData(t *testing.T) {
	h := start(t, Config{})
	idle := dialRaw(t, h.addr())
	idle.reply()
	idle.expect("EHLO idle.test", 250)

	c := begin(t, h.addr())
	c.expect("DATA", 354)
	c.send("Subject: in flight\r\n\r\nfirst half\r\n")
	waitFor(t, func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		for cn := range h.srv.conns {
			cn.mu.Lock()
			busy := cn.inData
			cn.mu.Unlock()
			if busy {
				return true
			}
		}
		return false
	})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(ctx)
	}()
	assert.True(t, idle.closed(), "idle session closed")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned before the message was done: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	c.send("second half\r\n.\r\n")
	code, text := c.reply()
	assert.Equal(t, 250, code, text)
	assert.True(t, c.closed(), "closed after the reply")
	require.NoError(t, <-done)
	msgs := h.queue.all()
	require.Len(t, msgs, 1)
	assert.Contains(t, msgs[0].Data, "first half\r\nsecond half\r\n")
	for _, err := range []error{<-h.errc} {
		assert.ErrorIs(t, err, ErrServerClosed)
	}
	_, err := dialRawErr(h.addr())
	assert.Error(t, err, "no new connections")
}

func dialRawErr(addr string) (string, error) {
	c, err := dialNet(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && !strings.HasPrefix(line, "220") {
		err = errors.New(line)
	}
	return line, err
}

func b64(s string) string { return encodeB64(s) }

var _ = sasl.NewPlainClient

// TestHeaderTooLarge: a header block over policy.MaxHeaderBytes is the
// client's fault and a size matter (552 5.3.4), not a malformed message
// (554); nothing is queued and the session goes on.
func TestHeaderTooLarge(t *testing.T) {
	h := start(t, Config{})
	c := begin(t, h.addr())
	c.expect("DATA", 354)
	w := bufioWriter(c.Conn)
	line := "X-Filler: " + strings.Repeat("y", 988) + "\r\n"
	for range policy.MaxHeaderBytes/len(line) + 10 {
		w.WriteString(line)
	}
	w.WriteString("\r\nbody\r\n.\r\n")
	require.NoError(t, w.Flush())
	code, text := c.reply()
	assert.Equal(t, 552, code, text)
	assert.Contains(t, text, "5.3.4")
	assert.Empty(t, h.queue.all())
	c.expect("RSET", 250)
	normalClient(t, h)
}
