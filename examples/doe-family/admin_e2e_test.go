package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue/admin"
)

// The queue command's end-to-end tests: the real binary serving its admin
// socket, and "doe-family queue ..." run as an operator runs it, against
// the running server and, server stopped, on the spool directly.

// queueRun is the outcome of one "doe-family queue" command.
type queueRun struct {
	stdout, stderr string
	err            error
}

// queueCmd runs "doe-family queue args..." for e's server (its -spool and
// -data), with extra flags after.
func (e *env) queueCmd(args ...string) queueRun {
	e.t.Helper()
	args = append(append([]string{"queue"}, args...), "-spool", e.spool, "-data", filepath.Join(e.dir, "data"))
	cmd := exec.Command(binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	e.t.Logf("doe-family %s\n%s%s", strings.Join(args, " "), stdout.String(), stderr.String())
	return queueRun{stdout.String(), stderr.String(), err}
}

// queueOK runs a command that must succeed against the running server
// (not offline) and returns its stdout.
func (e *env) queueOK(args ...string) string {
	e.t.Helper()
	r := e.queueCmd(args...)
	require.NoError(e.t, r.err, "stderr: %s", r.stderr)
	require.NotContains(e.t, r.stderr, "working on the spool", "the running server answers")
	return r.stdout
}

// queueJSON runs a command with -json and decodes its output into out.
func (e *env) queueJSON(out any, args ...string) {
	e.t.Helper()
	require.NoError(e.t, json.Unmarshal([]byte(e.queueOK(append(args, "-json")...)), out))
}

// waitIDs waits until queue q of the spool holds n messages and returns
// their IDs.
func (e *env) waitIDs(q string, n int) []string {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(e.spool, filepath.FromSlash(q), "*.q"))
		if len(files) == n {
			var ids []string
			for _, f := range files {
				ids = append(ids, strings.TrimSuffix(filepath.Base(f), ".q"))
			}
			return ids
		}
		require.True(e.t, time.Now().Before(deadline), "waiting for %d messages in %s, have %d", n, q, len(files))
		time.Sleep(20 * time.Millisecond)
	}
}

// sendDeferred sends a message from john to friend@other.test through
// submission and waits until it is deferred (the relayhost refuses it);
// it returns its ID.
func (e *env) sendDeferred(subject string, before int) string {
	e.t.Helper()
	e.sink.fail.Store(1 << 20)
	require.NoError(e.t, send(e.t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"},
		message("john@doe-family.com", "friend@other.test", subject, "body of "+subject)))
	ids := e.waitIDs("deferred", before+1)
	for _, id := range ids {
		b, err := os.ReadFile(filepath.Join(e.spool, "deferred", id+".q"))
		if err == nil && bytes.Contains(b, []byte("Subject: "+subject+"\r\n")) {
			return id
		}
	}
	e.t.Fatalf("%s not found in deferred", subject)
	return ""
}

// sendDMARCFail sends a message DMARC fails (From bank.test, p=reject),
// which doe-family quarantines in quarantine/dmarc; it returns its ID.
func (e *env) sendDMARCFail(subject string) string {
	e.t.Helper()
	require.NoError(e.t, send(e.t, e.listen, "client.example.org", false, "news@example.org", []string{"dmarc@doe-family.com"},
		message("ceo@bank.test", "dmarc@doe-family.com", subject, "x")))
	return e.waitIDs("quarantine/dmarc", 1)[0]
}

func TestAdminQueueCommand(t *testing.T) {
	e := newEnv(t, "-retry-min", "1h")
	assert.Contains(t, e.stdout.String(), "queue admin listening on "+filepath.Join(e.dir, "data", "admin.sock"))
	st, err := os.Stat(filepath.Join(e.dir, "data", "admin.sock"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	a := e.sendDeferred("deferred-a", 0)
	q := e.sendDMARCFail("dmarc-fail")

	t.Run("count", func(t *testing.T) {
		var c admin.Counts
		e.queueJSON(&c, "count")
		assert.Equal(t, 1, c.Queues["deferred"])
		assert.Equal(t, 1, c.Queues["quarantine/dmarc"])
		assert.Equal(t, 2, c.Total)
		out := e.queueOK("count")
		assert.Regexp(t, `(?m)^deferred\s+1$`, out)
		assert.Regexp(t, `(?m)^quarantine/dmarc\s+1$`, out)
		assert.Regexp(t, `(?m)^total\s+2$`, out)
	})

	t.Run("list", func(t *testing.T) {
		out := e.queueOK("list")
		assert.Contains(t, out, a)
		assert.Contains(t, out, q)
		assert.Contains(t, out, "in 2 Requests.")
		assert.Contains(t, out, "friend@other.test")
		var l admin.Listing
		e.queueJSON(&l, "list", "-queue", "deferred")
		require.Len(t, l.Messages, 1)
		m := l.Messages[0]
		assert.Equal(t, a, m.ID)
		assert.Equal(t, "john@doe-family.com", m.From)
		assert.Equal(t, []string{"friend@other.test"}, m.Rcpts)
		assert.Contains(t, m.LastError, "451")
		e.queueJSON(&l, "list", "-sender", "@example.org", "-max-age", "1h")
		require.Len(t, l.Messages, 1)
		assert.Equal(t, q, l.Messages[0].ID)
		e.queueJSON(&l, "list", "-min-age", "1h")
		assert.Empty(t, l.Messages)
	})

	t.Run("show", func(t *testing.T) {
		var d admin.Detail
		e.queueJSON(&d, "show", a)
		assert.Equal(t, "deferred", d.Queue)
		require.Len(t, d.Envelope.Rcpts, 1)
		assert.Equal(t, "pending", d.Envelope.Rcpts[0].State)
		assert.Equal(t, 451, d.Envelope.Rcpts[0].Reply.Code)
		assert.Contains(t, d.Header, "Subject: deferred-a")
		out := e.queueOK("show", a)
		assert.Contains(t, out, "queue:       deferred")
		assert.Contains(t, out, "friend@other.test")
		assert.Contains(t, out, "DKIM-Signature:", "the header as delivered: signed at postq")
		raw := e.queueOK("show", "-raw", a)
		assert.Contains(t, raw, "Subject: deferred-a\r\n")
		assert.Contains(t, raw, "body of deferred-a")
		r := e.queueCmd("show", "nope")
		assert.Error(t, r.err)
		assert.Contains(t, r.stderr, "no such message")
	})

	t.Run("release from quarantine is delivered, not quarantined again", func(t *testing.T) {
		assert.Equal(t, q+": released\n", e.queueOK("release", q))
		files := waitFiles(t, filepath.Join(e.maildir, "dmarc", "new"), 1)
		assert.Contains(t, files[0], "Subject: dmarc-fail")
		assert.Contains(t, files[0], "dmarc=fail", "the postq rules' verdict stays in the header")
		e.waitIDs("quarantine/dmarc", 0)
		var c admin.Counts
		e.queueJSON(&c, "count")
		assert.Equal(t, 0, c.Queues["quarantine/dmarc"])
		assert.Equal(t, 1, c.Total, "only the deferred message is left")
	})

	t.Run("hold, then release", func(t *testing.T) {
		e.sink.fail.Store(0)
		assert.Equal(t, a+": held\n", e.queueOK("hold", a))
		e.waitIDs("hold", 1)
		r := e.queueCmd("requeue", a)
		assert.Error(t, r.err, "a held message is not requeued")
		assert.Contains(t, r.stderr, "cannot requeue from hold")
		assert.Empty(t, e.sink.received(), "never delivered while held")
		assert.Equal(t, a+": released\n", e.queueOK("release", a))
		msgs := waitSink(t, e.sink, 1)
		assert.Contains(t, string(msgs[0].Data), "Subject: deferred-a")
		e.waitIDs("hold", 0)
	})

	t.Run("requeue", func(t *testing.T) {
		b := e.sendDeferred("deferred-b", 0)
		e.sink.fail.Store(0)
		assert.Equal(t, b+": requeued\n", e.queueOK("requeue", b))
		msgs := waitSink(t, e.sink, 2)
		assert.Contains(t, string(msgs[1].Data), "Subject: deferred-b", "tried at once, not after its hour of backoff")
	})

	t.Run("delete", func(t *testing.T) {
		c := e.sendDeferred("deferred-c", 0)
		assert.Equal(t, c+": deleted\n", e.queueOK("delete", c))
		e.waitIDs("deferred", 0)
		r := e.queueCmd("delete", c)
		assert.Error(t, r.err)
		assert.Contains(t, r.stderr, "no such message")
	})

	t.Run("bounce reaches the local sender", func(t *testing.T) {
		d := e.sendDeferred("deferred-d", 0)
		assert.Equal(t, d+": bounced\n", e.queueOK("bounce", d))
		files := waitFiles(t, filepath.Join(e.maildir, "john", "new"), 1)
		assert.Contains(t, files[0], "Subject: Undelivered Mail Returned to Sender")
		assert.Contains(t, files[0], "Final-Recipient: rfc822; friend@other.test")
		assert.Contains(t, files[0], "Message returned to sender by the mail system administrator")
		assert.Contains(t, files[0], "Subject: deferred-d", "the message is returned")
		e.waitIDs("deferred", 0)
		e.waitIDs("dead", 0) // deleted, not kept
	})

	t.Run("-all with filters", func(t *testing.T) {
		e.sendDeferred("deferred-e", 0)
		e.sendDeferred("deferred-f", 1)
		r := e.queueCmd("hold", "-queue", "deferred")
		assert.Error(t, r.err, "filters only with -all")
		out := e.queueOK("hold", "-all", "-queue", "deferred", "-recipient", "friend@")
		assert.Equal(t, 2, strings.Count(out, ": held\n"))
		e.waitIDs("hold", 2)
		var res admin.Results
		e.queueJSON(&res, "delete", "-all", "-queue", "hold")
		assert.Len(t, res.Results, 2)
		assert.Equal(t, 0, res.Failed)
		var c admin.Counts
		e.queueJSON(&c, "count")
		assert.Equal(t, 0, c.Total)
	})

	// A running server holds its spool: with a wrong socket path the
	// command says so rather than touch the spool.
	r := e.queueCmd("list", "-admin", filepath.Join(e.dir, "nothing.sock"))
	assert.Error(t, r.err)
	assert.Contains(t, r.stderr, "a server holds the spool")
}

func TestAdminQueueCommandTCP(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("0123456789abcdef\n"), 0o600))
	wrongFile := filepath.Join(dir, "wrong")
	require.NoError(t, os.WriteFile(wrongFile, []byte("fedcba9876543210\n"), 0o600))
	addr := freePort(t)
	e := newEnv(t, "-admin-addr", addr, "-admin-token-file", tokenFile, "-admin", "off")
	assert.Contains(t, e.stdout.String(), "queue admin listening on "+addr)
	_, err := os.Stat(filepath.Join(e.dir, "data", "admin.sock"))
	assert.ErrorIs(t, err, os.ErrNotExist, "-admin off: no socket")

	tests := []struct {
		name  string
		args  []string
		err   string // "" for success
		total string
	}{
		{"with the token", []string{"-admin-addr", addr, "-admin-token-file", tokenFile}, "", "total                    0\n"},
		{"with a wrong token", []string{"-admin-addr", addr, "-admin-token-file", wrongFile}, "(401)", ""},
		{"without a token", []string{"-admin-addr", addr}, "needs -admin-token-file", ""},
		{"no socket, spool held", nil, "a server holds the spool", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.queueCmd(append([]string{"count"}, tt.args...)...)
			if tt.err != "" {
				assert.Error(t, r.err)
				assert.Contains(t, r.stderr, tt.err)
				return
			}
			require.NoError(t, r.err, r.stderr)
			assert.Contains(t, r.stdout, tt.total)
		})
	}
}

func TestAdminQueueCommandOffline(t *testing.T) {
	e := newEnv(t, "-retry-min", "1h")
	sock := filepath.Join(e.dir, "data", "admin.sock")
	a := e.sendDeferred("offline-a", 0)
	e.stop(syscall.SIGTERM)
	_, err := os.Stat(sock)
	assert.ErrorIs(t, err, os.ErrNotExist, "a server that stops removes its socket")

	// No server: the command works on the spool, and says so.
	r := e.queueCmd("list")
	require.NoError(t, r.err, r.stderr)
	assert.Contains(t, r.stderr, "working on the spool "+e.spool+" directly")
	assert.Contains(t, r.stdout, a)
	r = e.queueCmd("hold", a)
	require.NoError(t, r.err, r.stderr)
	assert.Contains(t, r.stderr, "working on the spool")
	assert.Equal(t, a+": held\n", r.stdout)

	// Started again, the server keeps it held and answers on its socket.
	e.sink.fail.Store(0)
	e.start()
	var c admin.Counts
	e.queueJSON(&c, "count")
	assert.Equal(t, 1, c.Queues["hold"])
	assert.Empty(t, e.sink.received())

	// Killed, it leaves its socket behind: nobody answers on it, and the
	// command works on the spool.
	e.stop(syscall.SIGKILL)
	_, err = os.Stat(sock)
	require.NoError(t, err, "the socket of a killed server stays")
	r = e.queueCmd("release", a)
	require.NoError(t, r.err, r.stderr)
	assert.Contains(t, r.stderr, "working on the spool")
	assert.Contains(t, r.stderr, "delivery happens when the server next starts")
	e.waitIDs("deliver", 1)

	// The next start replaces the stale socket and delivers the message.
	e.start()
	msgs := waitSink(t, e.sink, 1)
	assert.Contains(t, string(msgs[0].Data), "Subject: offline-a")
	e.queueJSON(&c, "count")
	assert.Equal(t, 0, c.Total)
}

// TestAdminReleaseVirusQ: a message the antivirus quarantined in virus_q
// and released is delivered and not scanned again (it would be
// quarantined again: it is EICAR).
func TestAdminReleaseVirusQ(t *testing.T) {
	e := newAntivirusEnv(t)
	eicar := `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
		message("someone@example.org", "jane@doe-family.com", "virus", eicar)))
	id := e.waitIDs("quarantine/virus_q", 1)[0]
	var l admin.Listing
	e.queueJSON(&l, "list", "-queue", "quarantine/virus_q")
	require.Len(t, l.Messages, 1)
	assert.Equal(t, id, l.Messages[0].ID)

	assert.Equal(t, id+": released\n", e.queueOK("release", id))
	files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
	assert.Contains(t, files[0], "Subject: virus")
	assert.Contains(t, files[0], "EICAR-STANDARD-ANTIVIRUS-TEST-FILE")
	e.waitIDs("quarantine/virus_q", 0)
	var c admin.Counts
	e.queueJSON(&c, "count")
	assert.Equal(t, 0, c.Total, "not quarantined again")
}

// newAntivirusEnv starts clamd and clamsmtpd (as TestAntivirus does) and
// a doe-family with -clamav; it skips the test without them, unless
// MTAKIT_INTEGRATION=1 asks for them.
func newAntivirusEnv(t *testing.T) *env {
	t.Helper()
	for _, tool := range []string{"clamd", "clamsmtpd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 != nil {
				if os.Getenv("MTAKIT_INTEGRATION") == "1" {
					t.Fatalf("%s is required under MTAKIT_INTEGRATION=1: %v", tool, err)
				}
				t.Skipf("%s not installed (apt-get install clamav-daemon clamsmtp clamav); skipping", tool)
			}
		}
	}
	clamsmtpd, recv := runClamAV(t)
	return newEnv(t, "-clamav", clamsmtpd, "-receiver", recv)
}
