package main

import (
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// harnessUsers are the accounts, beyond john, that the other end-to-end
// tests send to: with -users the server knows its recipients, and refuses
// any other local part with 550 5.1.1.
func harnessUsers(hash string) string {
	var b strings.Builder
	names := []string{"jane", "dmarc", "par"}
	for i := range 8 {
		names = append(names, "load"+string(rune('0'+i)))
	}
	for _, n := range names {
		b.WriteString(n + "@doe-family.com:" + hash + "\n")
	}
	return b.String()
}

// writeAliases writes an alias file under a fresh directory.
func writeAliases(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "aliases")
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// rcptReply opens a transaction and returns the reply to one RCPT.
func rcptReply(t *testing.T, addr, rcpt string) error {
	t.Helper()
	c, err := gosmtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.org"))
	require.NoError(t, c.Mail("someone@example.org", nil))
	return c.Rcpt(rcpt, nil)
}

// submitAs authenticates as login on the submission port and sends from
// from; it returns the first error reply.
func submitAs(t *testing.T, e *env, login, from string, to []string, msg string) error {
	t.Helper()
	c, err := gosmtp.DialStartTLS(e.submission, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("laptop.example.net"))
	require.NoError(t, c.Auth(sasl.NewPlainClient("", login, password)))
	if err := transact(c, from, to, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

func TestRecipients(t *testing.T) {
	aliases := writeAliases(t, "# the family\nfamily@doe-family.com: john@doe-family.com, jane@doe-family.com\n")
	e := newEnv(t, "-aliases", aliases)
	outside := func(to []string, subject string) error {
		return send(t, e.listen, "client.example.org", false, "someone@example.org", to, message("someone@example.org", to[0], subject, "x"))
	}

	t.Run("unknown user 550 5.1.1", func(t *testing.T) {
		err := outside([]string{"nosuchuser-zz9@doe-family.com"}, "unknown")
		code, enh := smtpCode(t, err)
		assert.Equal(t, 550, code)
		assert.Equal(t, "5.1.1", enh)
		assert.Contains(t, err.Error(), "User unknown in virtual mailbox table")
		_, err = os.Stat(filepath.Join(e.maildir, "nosuchuser-zz9"))
		assert.ErrorIs(t, err, os.ErrNotExist, "no maildir for an invented name")
	})

	t.Run("alias to two local users", func(t *testing.T) {
		require.NoError(t, outside([]string{"family@doe-family.com"}, "to-the-family"))
		for _, who := range []string{"john", "jane"} {
			dir := filepath.Join(e.maildir, who, "new")
			waitFor(t, 20*time.Second, who+" gets the family's mail", func() bool { return mailboxHas(t, dir, "to-the-family") })
		}
		_, err := os.Stat(filepath.Join(e.maildir, "family"))
		assert.ErrorIs(t, err, os.ErrNotExist, "the alias has no maildir of its own")
	})

	t.Run("john+tag is delivered to john", func(t *testing.T) {
		require.NoError(t, outside([]string{"John+Tag@doe-family.com"}, "tagged"))
		dir := filepath.Join(e.maildir, "john", "new")
		waitFor(t, 20*time.Second, "tagged mail in john's maildir", func() bool { return mailboxHas(t, dir, "tagged") })
		_, err := os.Stat(filepath.Join(e.maildir, "john+tag"))
		assert.ErrorIs(t, err, os.ErrNotExist)
	})

	t.Run("abuse and postmaster are accepted", func(t *testing.T) {
		require.NoError(t, rcptReply(t, e.listen, "postmaster@doe-family.com"))
		require.NoError(t, outside([]string{"abuse@doe-family.com"}, "abuse-report"))
		// They go to the first account of the domain.
		dir := filepath.Join(e.maildir, "john", "new")
		waitFor(t, 20*time.Second, "abuse report in john's maildir", func() bool { return mailboxHas(t, dir, "abuse-report") })
	})

	t.Run("sender mismatch 553 5.7.1 on submission", func(t *testing.T) {
		err := submitAs(t, e, "john@doe-family.com", "jane@doe-family.com", []string{"friend@other.test"}, message("jane@doe-family.com", "friend@other.test", "as-jane", "x"))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 553, code)
		assert.Equal(t, "5.7.1", enh)
		assert.Contains(t, err.Error(), "not owned by user john@doe-family.com")

		err = submitAs(t, e, "john@doe-family.com", "ceo@bigbank.example", []string{"friend@other.test"}, message("ceo@bigbank.example", "friend@other.test", "as-ceo", "x"))
		code, _ = smtpCode(t, err)
		assert.Equal(t, 553, code)

		// The header From is held to the same rule.
		err = submitAs(t, e, "john@doe-family.com", "john@doe-family.com", []string{"friend@other.test"}, message("jane@doe-family.com", "friend@other.test", "header-jane", "x"))
		code, enh = smtpCode(t, err)
		assert.Equal(t, 553, code)
		assert.Equal(t, "5.7.1", enh)

		// An alias that leads to john is his.
		n := len(e.sink.received())
		require.NoError(t, submitAs(t, e, "john@doe-family.com", "family@doe-family.com", []string{"friend@other.test"}, message("family@doe-family.com", "friend@other.test", "as-family", "x")))
		got := waitSink(t, e.sink, n+1)
		assert.Equal(t, "family@doe-family.com", got[len(got)-1].From)
	})

	t.Run("reload of the alias file without restart", func(t *testing.T) {
		code, _ := smtpCode(t, rcptReply(t, e.listen, "team@doe-family.com"))
		require.Equal(t, 550, code)
		require.NoError(t, os.WriteFile(aliases, []byte("family@doe-family.com: john@doe-family.com, jane@doe-family.com\nteam@doe-family.com: jane@doe-family.com\n"), 0o600))
		waitFor(t, 30*time.Second, "team@ accepted after the reload", func() bool { return rcptReply(t, e.listen, "team@doe-family.com") == nil })
		require.NoError(t, outside([]string{"team@doe-family.com"}, "to-the-team"))
		dir := filepath.Join(e.maildir, "jane", "new")
		waitFor(t, 20*time.Second, "team mail in jane's maildir", func() bool { return mailboxHas(t, dir, "to-the-team") })
		// That a broken file is refused and the table in force stays is
		// tested in relay (TestRecipientTableWatch), where the log shows it.
	})
}

func TestRecipientsSeveralDomains(t *testing.T) {
	aliases := writeAliases(t, "info@doe.example: jane@doe-family.com\nsales@doe.example: shop@doe.example\nshop@doe.example: john@doe-family.com\n")
	e := newEnv(t, "-domain", "doe-family.com,doe.example", "-aliases", aliases)

	code, enh := smtpCode(t, rcptReply(t, e.listen, "john@doe.example"))
	assert.Equal(t, 550, code, "each domain has its own accounts")
	assert.Equal(t, "5.1.1", enh)
	require.NoError(t, rcptReply(t, e.listen, "postmaster@doe.example"), "every local domain has a postmaster")

	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"info@doe.example", "sales@doe.example"},
		message("someone@example.org", "info@doe.example", "second-domain", "x")))
	waitFor(t, 20*time.Second, "info@ in jane's maildir", func() bool { return mailboxHas(t, filepath.Join(e.maildir, "jane", "new"), "second-domain") })
	waitFor(t, 20*time.Second, "sales@ in john's maildir", func() bool { return mailboxHas(t, filepath.Join(e.maildir, "john", "new"), "second-domain") })
}

func TestRecipientsCatchAll(t *testing.T) {
	// No -users, no -aliases: every local part is accepted, as the
	// README's first command promises.
	e := newEnv(t, "-users", "")
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"anyone-at-all@doe-family.com"},
		message("someone@example.org", "anyone-at-all@doe-family.com", "catch-all", "x")))
	waitFor(t, 20*time.Second, "catch-all delivery", func() bool {
		return mailboxHas(t, filepath.Join(e.maildir, "anyone-at-all", "new"), "catch-all")
	})

	// It says so at start, in one WARN line. The harness keeps the
	// server's stderr to itself: run it again on the same arguments.
	e.stop(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, e.args...)
	stdout, stderr := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	require.NoError(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitFor(t, 20*time.Second, "the server ready again", func() bool { return strings.Contains(stdout.String(), "doe-family ready") })
	var warns []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "catch-all") {
			warns = append(warns, l)
		}
	}
	assert.Len(t, warns, 1, stderr.String())
}

// TestBadAliasFileFailsStart: a bad line of -aliases stops the server at
// start, and the error names the file and the line.
func TestBadAliasFileFailsStart(t *testing.T) {
	aliases := writeAliases(t, "# ok so far\nfamily@doe-family.com: john@doe-family.com\nthis line is wrong\n")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "-aliases", aliases, "-listen", "127.0.0.1:0", "-submission", "",
		"-spool", filepath.Join(dir, "queue"), "-maildir", filepath.Join(dir, "mail"), "-data", filepath.Join(dir, "data")).CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), aliases+":3:")
	assert.NotContains(t, string(out), "doe-family ready")
}
