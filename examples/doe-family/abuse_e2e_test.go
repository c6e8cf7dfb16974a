package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	miekgdns "github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// End-to-end tests of the anti-abuse flags (-dnsbl, -rate-limit,
// -greylist) and the HELO check, on the harness of e2e_test.go.

// greeting connects to addr from the loopback address ip and returns the
// server's first reply line.
func greeting(t *testing.T, ip, addr string) string {
	t.Helper()
	conn, err := dialFrom(ip, addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	return strings.TrimRight(line, "\r\n")
}

// abuseEnv is newEnv with an SPF record that lets any loopback address
// send for loopback.test, and none for nospf.test.
func abuseEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	e := newEnv(t, extra...)
	e.dns.Add(`loopback.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"`)
	return e
}

func replyOf(t *testing.T, err error) string {
	t.Helper()
	var se *gosmtp.SMTPError
	require.True(t, errors.As(err, &se), "want an SMTP error reply, got %v", err)
	code, enh := smtpCode(t, err)
	return strconv.Itoa(code) + " " + enh + " " + se.Message
}

func TestAbuseDNSBL(t *testing.T) {
	e := abuseEnv(t, "-dnsbl", "bl.test=127.0.0.[2..11]")
	e.dns.Add(`2.0.0.127.bl.test. A 127.0.0.2`, `3.0.0.127.bl.test. A 127.0.0.99`)

	assert.Equal(t, "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.test", greeting(t, "127.0.0.2", e.listen),
		"a listed client is refused with Postfix's wording")
	assert.True(t, strings.HasPrefix(greeting(t, "127.0.0.2", e.submission), "220 "),
		"the submission port is not checked: family members send from dynamic addresses")

	// An answer outside the mapped codes is no listing: mail goes through.
	require.NoError(t, sendFrom("127.0.0.3", e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
		message("someone@loopback.test", "jane@doe-family.com", "dnsbl-unmapped", "x")))
	waitFor(t, 20*time.Second, "delivery", func() bool {
		return mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "dnsbl-unmapped")
	})

	// A DNS failure never refuses.
	e.dns.Fail("4.0.0.127.bl.test.", miekgdns.RcodeServerFailure)
	assert.True(t, strings.HasPrefix(greeting(t, "127.0.0.4", e.listen), "220 "))
}

func TestAbuseRateLimit(t *testing.T) {
	e := abuseEnv(t, "-rate-limit", "msgs=2/h,conns=4/m")

	t.Run("messages per client address", func(t *testing.T) {
		for i := range 2 {
			require.NoError(t, sendFrom("127.0.0.5", e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
				message("someone@loopback.test", "jane@doe-family.com", "rate-"+strconv.Itoa(i), "x")))
		}
		err := sendFrom("127.0.0.5", e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
			message("someone@loopback.test", "jane@doe-family.com", "rate-3", "x"))
		assert.Equal(t, "450 4.7.1 Error: too much mail from [127.0.0.5]", replyOf(t, err))
	})

	t.Run("messages per authenticated user", func(t *testing.T) {
		for i := range 2 {
			require.NoError(t, submit(e.submission, "john@doe-family.com", []string{"jane@doe-family.com"},
				strings.NewReader(message("john@doe-family.com", "jane@doe-family.com", "sub-"+strconv.Itoa(i), "x"))))
		}
		err := submit(e.submission, "john@doe-family.com", []string{"jane@doe-family.com"},
			strings.NewReader(message("john@doe-family.com", "jane@doe-family.com", "sub-3", "x")))
		assert.Equal(t, "450 4.7.1 Error: too much mail from john@doe-family.com", replyOf(t, err))
	})

	t.Run("connections per minute", func(t *testing.T) {
		for i := range 4 {
			assert.True(t, strings.HasPrefix(greeting(t, "127.0.0.6", e.listen), "220 "), "connection %d", i+1)
		}
		assert.Equal(t, "421 4.7.1 Error: too many connections from [127.0.0.6]", greeting(t, "127.0.0.6", e.listen))
	})
}

func TestAbuseRateLimitBadFlag(t *testing.T) {
	for _, arg := range []string{"msgs=lots", "mails=1/h", "msgs=1/fortnight"} {
		cmd := exec.Command(binary, "-rate-limit", arg, "-data", t.TempDir(), "-spool", t.TempDir(), "-maildir", t.TempDir(),
			"-listen", freePort(t), "-submission", "")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "%s: the server must not start: %v", arg, err)
		assert.Contains(t, stderr.String(), "doe-family: -rate-limit: ", arg)
		assert.Contains(t, stderr.String(), arg)
	}
}

func TestAbuseGreylistOn(t *testing.T) {
	const delay = 2 * time.Second
	e := abuseEnv(t, "-greylist", "-greylist-delay", delay.String())
	jane := filepath.Join(e.maildir, "jane", "new")
	send := func(subject string) error {
		return sendFrom("127.0.0.7", e.listen, "someone@nospf.test", []string{"jane@doe-family.com"},
			message("someone@nospf.test", "jane@doe-family.com", subject, "x"))
	}

	first := time.Now()
	err := send("greylisted")
	assert.Equal(t, "451 4.7.1 <jane@doe-family.com>: Recipient address rejected: Greylisted, try again in 2 seconds", replyOf(t, err))
	if err := send("greylisted"); time.Since(first) < delay {
		assert.Contains(t, replyOf(t, err), "Greylisted", "a retry before the delay is refused again")
	}
	// The sender retries until the delay has passed.
	var passed time.Time
	waitFor(t, 20*time.Second, "a retry after the delay to pass", func() bool {
		if send("greylisted") != nil {
			return false
		}
		passed = time.Now()
		return true
	})
	assert.GreaterOrEqual(t, passed.Sub(first), delay)
	waitFor(t, 20*time.Second, "delivery", func() bool { return mailboxHas(t, jane, "greylisted") })
	// The triplet is now allowed at once.
	require.NoError(t, send("allowed"))

	// SPF pass (example.org allows 127.0.0.1) and authenticated senders
	// are never greylisted.
	require.NoError(t, sendFrom("127.0.0.1", e.listen, "news@example.org", []string{"jane@doe-family.com"},
		message("news@example.org", "jane@doe-family.com", "spf-pass", "x")))
	require.NoError(t, submit(e.submission, "john@doe-family.com", []string{"jane@doe-family.com"},
		strings.NewReader(message("john@doe-family.com", "jane@doe-family.com", "submitted", "x"))))
	// Relaying is refused at once, not greylisted first.
	err = sendFrom("127.0.0.7", e.listen, "someone@nospf.test", []string{"victim@other.test"},
		message("someone@nospf.test", "victim@other.test", "relay", "x"))
	assert.Contains(t, replyOf(t, err), "554 5.7.1")

	// The state is saved under -data at shutdown.
	e.stop(syscall.SIGTERM)
	state, err := os.ReadFile(filepath.Join(e.dir, "data", "greylist", "greylist.json"))
	require.NoError(t, err)
	assert.Contains(t, string(state), "someone@nospf.test jane@doe-family.com")
}

func TestAbuseGreylistOff(t *testing.T) {
	e := abuseEnv(t)
	require.NoError(t, sendFrom("127.0.0.7", e.listen, "someone@nospf.test", []string{"jane@doe-family.com"},
		message("someone@nospf.test", "jane@doe-family.com", "not-greylisted", "x")), "greylisting is off by default")
	waitFor(t, 20*time.Second, "delivery", func() bool {
		return mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "not-greylisted")
	})
	_, err := os.Stat(filepath.Join(e.dir, "data", "greylist"))
	assert.True(t, os.IsNotExist(err), "no greylisting state without -greylist")
}

func TestAbuseHelo(t *testing.T) {
	e := abuseEnv(t)
	for _, tt := range []struct{ helo, want string }{
		{"mx.doe-family.com", "550 5.7.1 <mx.doe-family.com>: Helo command rejected: that is our own name"},
		{"doe-family.com", "550 5.7.1 <doe-family.com>: Helo command rejected: that is our own name"},
		{"[127.0.0.1]", "550 5.7.1 <[127.0.0.1]>: Helo command rejected: that is our own name"},
		{"bad!name", "501 5.5.2 <bad!name>: Helo command rejected: Invalid name"},
		{"laptop", "504 5.5.2 <laptop>: Helo command rejected: need fully-qualified hostname"},
	} {
		conn, err := dialFrom("127.0.0.8", e.listen)
		require.NoError(t, err)
		c := gosmtp.NewClient(conn)
		err = c.Hello(tt.helo)
		c.Close()
		assert.Equal(t, tt.want, replyOf(t, err), tt.helo)
	}
	// A good name is served.
	require.NoError(t, sendFrom("127.0.0.8", e.listen, "someone@loopback.test", []string{"jane@doe-family.com"},
		message("someone@loopback.test", "jane@doe-family.com", "helo-ok", "x")))
}
