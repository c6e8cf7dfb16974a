package main

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lineClient is a scripted SMTP client that reads each reply whole, to
// check its exact text.
type lineClient struct {
	t *testing.T
	net.Conn
	r *bufio.Reader
}

func dialLines(t *testing.T, addr string) *lineClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	lc := &lineClient{t: t, Conn: c, r: bufio.NewReader(c)}
	lc.reply() // greeting
	return lc
}

// reply reads one reply and returns its last line.
func (c *lineClient) reply() string {
	c.t.Helper()
	for {
		line, err := c.r.ReadString('\n')
		require.NoError(c.t, err)
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

func (c *lineClient) say(cmd string) string {
	c.t.Helper()
	_, err := c.Write([]byte(cmd + "\r\n"))
	require.NoError(c.t, err)
	return c.reply()
}

// starttls upgrades the connection; the client must say EHLO again.
func (c *lineClient) starttls() {
	c.t.Helper()
	require.Equal(c.t, "220 2.0.0 Ready to start TLS", c.say("STARTTLS"))
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true})
	require.NoError(c.t, tc.Handshake())
	c.Conn, c.r = tc, bufio.NewReader(tc)
}

// TestSMTP15 covers issue 15's SMTP parts end to end: the bare postmaster,
// STARTTLS with a parameter, and the enhanced codes of MAIL and RCPT.
func TestSMTP15(t *testing.T) {
	e := newEnv(t)

	for _, tc := range []struct {
		name     string
		tls      bool
		rcpt     string
		subject  string
		delivers int // messages in john's maildir after this case
	}{
		{"bare postmaster", false, "RCPT TO:<postmaster>", "to-postmaster", 1},
		{"bare postmaster in another case, over STARTTLS", true, "RCPT TO:<PostMaster>", "to-postmaster-tls", 2},
		{"postmaster with the domain", false, "RCPT TO:<postmaster@doe-family.com>", "to-postmaster-domain", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialLines(t, e.listen)
			require.True(t, strings.HasPrefix(c.say("EHLO client.example.org"), "250 "))
			if tc.tls {
				c.starttls()
				require.True(t, strings.HasPrefix(c.say("EHLO client.example.org"), "250 "))
			}
			assert.Equal(t, "250 2.1.0 Sender OK", c.say("MAIL FROM:<someone@example.org>"))
			assert.Equal(t, "250 2.1.5 Recipient OK", c.say(tc.rcpt))
			assert.Equal(t, "354 Go ahead. End your data with <CR><LF>.<CR><LF>", c.say("DATA"))
			msg := message("someone@example.org", "postmaster@doe-family.com", tc.subject, "for the postmaster")
			reply := c.say(strings.TrimSuffix(msg, "\r\n") + "\r\n.")
			assert.True(t, strings.HasPrefix(reply, "250 2.0.0 OK: queued as "), reply)
			assert.Equal(t, "221 2.0.0 Bye", c.say("QUIT"))
			// postmaster@ of the first -domain goes to its first account
			// (rcpt_e2e_test.go's harness: john).
			files := waitFiles(t, filepath.Join(e.maildir, "john", "new"), tc.delivers)
			found := false
			for _, f := range files {
				if strings.Contains(f, "Subject: "+tc.subject+"\n") {
					found = true
					unfolded := strings.ReplaceAll(f, "\n ", " ")
					assert.Contains(t, unfolded, "for <postmaster@doe-family.com>;", "the address the rules saw")
					assert.Contains(t, f, "Delivered-To: john@doe-family.com\n", "the postmaster alias")
				}
			}
			assert.True(t, found, "delivered to the postmaster's mailbox")
		})
	}

	t.Run("bare postmaster on submission needs AUTH like any recipient", func(t *testing.T) {
		c := dialLines(t, e.submission)
		c.say("EHLO laptop.example.net")
		c.starttls()
		c.say("EHLO laptop.example.net")
		assert.Equal(t, "530 5.7.0 Authentication required", c.say("MAIL FROM:<john@doe-family.com>"))
	})

	t.Run("STARTTLS with a parameter", func(t *testing.T) {
		for _, addr := range []string{e.listen, e.submission} {
			c := dialLines(t, addr)
			c.say("EHLO client.example.org")
			assert.Equal(t, "501 5.5.4 Syntax: STARTTLS takes no parameters", c.say("STARTTLS STARTTLS"))
			// No handshake began: the session goes on in the clear, and
			// STARTTLS without a parameter still works.
			assert.Equal(t, "250 2.0.0 I have successfully done nothing", c.say("NOOP"))
			c.starttls()
			assert.True(t, strings.HasPrefix(c.say("EHLO client.example.org"), "250 "))
			assert.Equal(t, "502 5.5.1 Already running in TLS", c.say("STARTTLS"))
		}
	})

	t.Run("submission: MAIL and RCPT enhanced codes after AUTH", func(t *testing.T) {
		c := dialLines(t, e.submission)
		c.say("EHLO laptop.example.net")
		c.starttls()
		c.say("EHLO laptop.example.net")
		assert.Equal(t, "235 2.7.0 Authentication succeeded", c.say("AUTH PLAIN "+plain("john@doe-family.com", password)))
		assert.Equal(t, "250 2.1.0 Sender OK", c.say("MAIL FROM:<john@doe-family.com>"))
		assert.Equal(t, "250 2.1.5 Recipient OK", c.say("RCPT TO:<friend@other.test>"))
		assert.Equal(t, "250 2.1.5 Recipient OK", c.say("RCPT TO:<postmaster>"))
		assert.Equal(t, "250 2.0.0 Session reset", c.say("RSET"))
	})
}

// plain is the initial response of AUTH PLAIN.
func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}
