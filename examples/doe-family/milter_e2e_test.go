package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// testMilter is a milter on loopback (go-milter's server side) standing in
// for rspamd: it adds a header field to every message, rejects GTUBE and
// discards a message whose subject says so.
type testMilter struct {
	gomilter.NoOpMilter
	subject string
	gtube   bool
}

func (m *testMilter) MailFrom(string, string, gomilter.Modifier) (*gomilter.Response, error) {
	m.subject, m.gtube = "", false
	return gomilter.RespContinue, nil
}

func (m *testMilter) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	if strings.EqualFold(name, "Subject") {
		m.subject = value
	}
	return gomilter.RespContinue, nil
}

func (m *testMilter) BodyChunk(chunk []byte, _ gomilter.Modifier) (*gomilter.Response, error) {
	m.gtube = m.gtube || bytes.Contains(chunk, []byte(gtube))
	return gomilter.RespContinue, nil
}

func (m *testMilter) EndOfMessage(mod gomilter.Modifier) (*gomilter.Response, error) {
	switch {
	case m.gtube:
		return gomilter.RejectWithCodeAndReason(554, "5.7.1 Gtube pattern")
	case m.subject == "discard-me":
		return gomilter.RespDiscard, nil
	}
	return gomilter.RespContinue, mod.AddHeader("X-Milter-Test", "scanned")
}

func startTestMilter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return &testMilter{} }),
		gomilter.WithActions(gomilter.OptAddHeader))
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "inet:" + ln.Addr().String()
}

// downMilter is the address of a milter that is not running.
func downMilter(t *testing.T) string {
	return "inet:" + freePort(t)
}

// waitSpoolIdle waits until no message is waiting in the spool.
func waitSpoolIdle(t *testing.T, spool string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		for _, q := range []string{"working", "deliver", "deferred"} {
			m, _ := filepath.Glob(filepath.Join(spool, q, "*"))
			n += len(m)
		}
		if n == 0 {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d messages still in the spool", n)
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMilter(t *testing.T) {
	e := newEnv(t, "-milter", startTestMilter(t))

	t.Run("a clean message is delivered with the milter's field", func(t *testing.T) {
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "clean", "hello")))
		files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
		assert.Contains(t, files[0], "X-Milter-Test: scanned\n") // the maildir has LF line ends
		assert.Contains(t, files[0], "Received-SPF: pass", "our own rules still run")
	})

	t.Run("GTUBE is refused with the milter's reply", func(t *testing.T) {
		err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"dmarc@doe-family.com"}, message("someone@example.org", "dmarc@doe-family.com", "spam", gtube))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 554, code)
		assert.Equal(t, "5.7.1", enh)
		assert.Contains(t, err.Error(), "Gtube pattern")
	})

	t.Run("a discarded message is accepted and dropped", func(t *testing.T) {
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"par@doe-family.com"}, message("someone@example.org", "par@doe-family.com", "discard-me", "x")))
		waitSpoolIdle(t, e.spool)
		_, err := os.Stat(filepath.Join(e.maildir, "par"))
		assert.True(t, os.IsNotExist(err), "nothing delivered: %v", err)
		dead, _ := filepath.Glob(filepath.Join(e.spool, "dead", "*"))
		assert.Empty(t, dead)
	})

	t.Run("outgoing mail is DKIM-signed after the milter", func(t *testing.T) {
		require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"}, message("john@doe-family.com", "friend@other.test", "signed-milter", "a signed message")))
		msgs := waitSink(t, e.sink, 1)
		got := msgs[len(msgs)-1]
		assert.Contains(t, string(got.Data), "X-Milter-Test: scanned\r\n")
		verifications, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				return e.dns.Resolver().LookupTXT(context.Background(), domain)
			},
		})
		require.NoError(t, err)
		require.Len(t, verifications, 1)
		assert.NoError(t, verifications[0].Err)
	})
}

// TestMilterDown: a milter that is down defers mail (tempfail, the
// default), or is skipped (accept) while the next milter still runs.
func TestMilterDown(t *testing.T) {
	t.Run("tempfail", func(t *testing.T) {
		e := newEnv(t, "-milter", downMilter(t))
		err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "down", "x"))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 451, code)
		assert.Equal(t, "4.7.1", enh)
		waitSpoolIdle(t, e.spool)
		_, err = os.Stat(filepath.Join(e.maildir, "jane"))
		assert.True(t, os.IsNotExist(err))
	})
	t.Run("accept", func(t *testing.T) {
		e := newEnv(t, "-milter", downMilter(t)+","+startTestMilter(t), "-milter-default-action", "accept")
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "down", "x")))
		files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
		assert.Contains(t, files[0], "X-Milter-Test: scanned\n", "the second milter ran")
	})
}

func TestMilterFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-milter", "127.0.0.1:11332"},
		{"-milter", "inet:127.0.0.1:11332,inet:127.0.0.1:11332"},
		{"-milter", "inet:127.0.0.1:11332", "-milter-default-action", "reject"},
	} {
		_, err := parseFlags(args, io.Discard)
		assert.Error(t, err, "%q", args)
	}
	c, err := parseFlags([]string{"-milter", "inet:127.0.0.1:11332, unix:/run/opendkim.sock", "-milter-default-action", "accept"}, io.Discard)
	require.NoError(t, err)
	addrs, err := parseMilters(c.milters)
	require.NoError(t, err)
	assert.Equal(t, "inet:127.0.0.1:11332 unix:/run/opendkim.sock", addrs[0].String()+" "+addrs[1].String())
}
