package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/smtp"
)

// The operating tests: SIGHUP, the result log lines, the start-up checks,
// against the real binary.

// opsEnv is newEnv whose server's stderr (its log) the test reads: the
// harness keeps it to itself, so the server is started again on the same
// arguments with its stderr kept.
func opsEnv(t *testing.T, extra ...string) (*env, *lockedBuffer) {
	t.Helper()
	e := newEnv(t, extra...)
	e.stop(syscall.SIGTERM)
	for attempt := 1; ; attempt++ {
		stderr, err := e.startLogged()
		if err == nil {
			return e, stderr
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			require.NoError(t, err)
		}
		e.newPorts()
	}
}

// startLogged starts the server on e.args, keeping its stderr, and waits
// until it is ready.
func (e *env) startLogged() (*lockedBuffer, error) {
	e.stdout = &lockedBuffer{}
	stderr := &lockedBuffer{}
	cmd := exec.Command(binary, e.args...)
	cmd.Stdout, cmd.Stderr = e.stdout, stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	e.cmd, e.exited = cmd, exited
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(e.stdout.String(), "doe-family ready") {
		select {
		case <-exited:
			if strings.Contains(stderr.String(), "address already in use") {
				return nil, errPortTaken
			}
			return nil, fmt.Errorf("server exited before it was ready: %s", stderr)
		case <-deadline:
			return nil, fmt.Errorf("server not ready after 20 s: %s", stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return stderr, nil
}

// hup sends SIGHUP and waits for the reload's summary line (the n-th
// since start), which it returns.
func (e *env) hup(stderr *lockedBuffer, n int) string {
	e.t.Helper()
	require.NoError(e.t, e.cmd.Process.Signal(syscall.SIGHUP))
	var line string
	waitFor(e.t, 20*time.Second, "the reload's summary line", func() bool {
		var lines []string
		for _, l := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(l, `msg=reloaded`) || strings.Contains(l, `msg="reloaded, with errors"`) {
				lines = append(lines, l)
			}
		}
		if len(lines) >= n {
			line = lines[n-1]
			return true
		}
		return false
	})
	select {
	case <-e.exited:
		e.t.Fatalf("the server exited on SIGHUP: %v", e.cmd.ProcessState)
	default:
	}
	return line
}

// login tries AUTH PLAIN on the submission port.
func login(addr, user string) error {
	c, err := gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("laptop.example.net"); err != nil {
		return err
	}
	return c.Auth(sasl.NewPlainClient("", user, password))
}

// sameStat rewrites path with data and gives it back its modification
// time: a file of the same size then looks unchanged to the watchers
// (mtime and size), so only SIGHUP can load it.
func sameStat(t *testing.T, path string, data []byte) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, st.Size(), int64(len(data)), "the new contents must keep the size")
	require.NoError(t, os.WriteFile(path, data, st.Mode().Perm()))
	require.NoError(t, os.Chtimes(path, st.ModTime(), st.ModTime()))
}

// TestSIGHUPReloadsUsers: SIGHUP loads a changed users file (a user
// replaced by another, the file's size and time kept, so the 5-second
// watchers cannot be what loaded it); a session open across it finishes
// its transaction; a broken file keeps the users in force, and the error
// is logged.
func TestSIGHUPReloadsUsers(t *testing.T) {
	e, stderr := opsEnv(t)
	users := filepath.Join(e.dir, "users")
	require.NoError(t, login(e.submission, "jane@doe-family.com"))
	require.Error(t, login(e.submission, "newb@doe-family.com"))

	// A session in the middle of a transaction, authenticated as john.
	c, err := gosmtp.DialStartTLS(e.submission, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("laptop.example.net"))
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "john@doe-family.com", password)))
	require.NoError(t, c.Mail("john@doe-family.com", nil))
	require.NoError(t, c.Rcpt("john@doe-family.com", nil))

	old, err := os.ReadFile(users)
	require.NoError(t, err)
	changed := bytes.Replace(old, []byte("jane@doe-family.com:"), []byte("newb@doe-family.com:"), 1)
	require.NotEqual(t, old, changed)
	sameStat(t, users, changed)
	line := e.hup(stderr, 1)
	assert.Contains(t, line, "level=INFO")
	assert.Contains(t, line, `users="13 → 13"`, "the file changed; as many users")
	assert.Contains(t, line, "errors=0")

	// The open session goes on and its message is delivered.
	w, err := c.Data()
	require.NoError(t, err)
	_, err = w.Write([]byte(message("john@doe-family.com", "john@doe-family.com", "across-sighup", "x")))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, c.Quit())
	waitFor(t, 20*time.Second, "the message of the open session", func() bool {
		return mailboxHas(t, filepath.Join(e.maildir, "john", "new"), "across-sighup")
	})

	// The new user logs in, the removed one no longer does, and the new
	// one is a local recipient too (the recipient table was reloaded).
	require.NoError(t, login(e.submission, "newb@doe-family.com"))
	require.Error(t, login(e.submission, "jane@doe-family.com"))
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"newb@doe-family.com"},
		message("someone@example.org", "newb@doe-family.com", "to-newb", "x")))

	// A broken file: the users in force stay, and the error is logged.
	require.NoError(t, os.WriteFile(users, append(changed, "this line is not a user\n"...), 0o600))
	line = e.hup(stderr, 2)
	assert.Contains(t, line, "level=WARN")
	assert.Contains(t, line, `users="error, kept"`)
	assert.Contains(t, stderr.String(), `msg="reload failed, keeping the previous users (-users)"`)
	assert.Contains(t, stderr.String(), users+":14: want address:bcrypt-hash")
	require.NoError(t, login(e.submission, "john@doe-family.com"))
	require.NoError(t, login(e.submission, "newb@doe-family.com"))

	// SIGTERM still stops it gracefully.
	e.stop(syscall.SIGTERM)
	assert.Equal(t, 0, e.cmd.ProcessState.ExitCode())
	assert.Contains(t, e.stdout.String(), "doe-family stopped")
}

// peerSerial returns the serial of the certificate the server shows a new
// STARTTLS client.
func peerSerial(t *testing.T, addr string) string {
	t.Helper()
	c, err := gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.org")) // the handshake is done by the first exchange
	st, ok := c.TLSConnectionState()
	require.True(t, ok)
	return fmt.Sprintf("%X", st.PeerCertificates[0].SerialNumber)
}

// TestSIGHUPReloadsCertificateAndDKIMKey: a new certificate is what a new
// TLS client sees after SIGHUP (written with the old files' size and time,
// so the certificate's own change check cannot be what loaded it); a new
// DKIM key is put in force and its record logged; a missing key file
// keeps the old key.
func TestSIGHUPReloadsCertificateAndDKIMKey(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_, err := smtp.SelfSignedCertificate(certFile, keyFile, []string{"localhost"})
	require.NoError(t, err)
	// Another certificate of the same file sizes (ECDSA signatures vary
	// in length by a byte or two: a few tries find one).
	var newCert, newKey []byte
	for i := 0; newCert == nil; i++ {
		require.Less(t, i, 200, "no certificate of the same size")
		d := t.TempDir()
		c, k := filepath.Join(d, "cert.pem"), filepath.Join(d, "key.pem")
		_, err := smtp.SelfSignedCertificate(c, k, []string{"localhost"})
		require.NoError(t, err)
		cb, _ := os.ReadFile(c)
		kb, _ := os.ReadFile(k)
		cs, _ := os.Stat(certFile)
		ks, _ := os.Stat(keyFile)
		if int64(len(cb)) == cs.Size() && int64(len(kb)) == ks.Size() {
			newCert, newKey = cb, kb
		}
	}

	e, stderr := opsEnv(t, "-tls-cert", certFile, "-tls-key", keyFile)
	before := peerSerial(t, e.listen)
	assert.Contains(t, stderr.String(), "serial "+before, "the start-up line names the certificate")
	assert.Contains(t, e.stdout.String(), "DKIM: publish 2022-09._domainkey.doe-family.com TXT \"v=DKIM1; k=ed25519; p=")

	sameStat(t, keyFile, newKey)
	sameStat(t, certFile, newCert)
	// The reloader's own check sees nothing new.
	require.Equal(t, before, peerSerial(t, e.listen))

	dkimKey := filepath.Join(e.dir, "dkim.pem")
	require.NoError(t, os.Remove(dkimKey))
	out, err := exec.Command(binary, "-dkim-genkey", dkimKey, "-dkim-genkey-type", "ed25519").CombinedOutput()
	require.NoError(t, err, "%s", out)

	line := e.hup(stderr, 1)
	after := peerSerial(t, e.listen)
	assert.NotEqual(t, before, after)
	assert.Contains(t, line, "certificate=\"serial "+before)
	assert.Contains(t, line, "→ serial "+after)
	assert.Contains(t, line, `dkim="new key, selector 2022-09"`)
	key, err := auth.LoadDKIMKey(dkimKey)
	require.NoError(t, err)
	signer, err := auth.NewDKIMSigner("doe-family.com", "2022-09", key)
	require.NoError(t, err)
	assert.Contains(t, line, signer.DNSRecord())

	// A DKIM key file gone: the key in force stays.
	require.NoError(t, os.Remove(dkimKey))
	line = e.hup(stderr, 2)
	assert.Contains(t, line, `dkim="error, kept"`)
	assert.Contains(t, line, "certificate=\"unchanged (serial "+after)
	assert.Contains(t, stderr.String(), `msg="reload failed, keeping the previous DKIM key (-dkim-key)"`)
}

// TestResultLogJSON: under -log-format json every line of a message
// carries the same "id", from the SMTP session to the queue's result
// line, and the start-up lines are JSON records too.
func TestResultLogJSON(t *testing.T) {
	e, stderr := opsEnv(t, "-log-format", "json")
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org",
		[]string{"john@doe-family.com"}, message("someone@example.org", "john@doe-family.com", "json-log", "x")))
	waitFor(t, 20*time.Second, "the result line", func() bool { return strings.Contains(stderr.String(), `"msg":"queue: result"`) })

	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec), "not JSON: %s", l)
		recs = append(recs, rec)
	}
	find := func(msg string) map[string]any {
		for _, r := range recs {
			if r["msg"] == msg {
				return r
			}
		}
		t.Fatalf("no %q record", msg)
		return nil
	}
	find("doe-family ready")
	assert.Equal(t, "mta", find("listening")["listener"])
	queued := find("queued")
	id, _ := queued["id"].(string)
	require.NotEmpty(t, id)
	res := find("queue: result")
	assert.Equal(t, id, res["id"])
	assert.Equal(t, "<someone@example.org>", res["from"])
	assert.Equal(t, "<john@doe-family.com>", res["to"])
	assert.Equal(t, "maildir:john", res["relay"])
	assert.Equal(t, "delivered", res["status"])
	assert.Equal(t, "2.0.0", res["dsn"])
	assert.Equal(t, 1.0, res["attempts"])
	assert.Contains(t, res, "delay")
	assert.Contains(t, res, "reply")
	// Every record of the message uses "id", none the old "tx".
	n := 0
	for _, r := range recs {
		assert.NotContains(t, r, "tx")
		if r["id"] == id {
			n++
		}
	}
	assert.GreaterOrEqual(t, n, 4, "mail, rcpt, preq, queued, result...")
}

// TestStartupChecks: a command-line mistake stops the server at start,
// with a message naming the flag.
func TestStartupChecks(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	exists := filepath.Join(dir, "exists.pem")
	require.NoError(t, os.WriteFile(exists, []byte("x"), 0o600))
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"relayhost without port", []string{"-relayhost", "smtp.example.net"}, "-relayhost: "},
		{"relayhost bad port", []string{"-relayhost", "smtp.example.net:99999"}, "-relayhost: "},
		{"relayhost port zero", []string{"-relayhost", "smtp.example.net:0"}, "-relayhost: "},
		{"relayhost bad host", []string{"-relayhost", "smtp example:25"}, "-relayhost: "},
		{"domain not a name", []string{"-domain", "doe-family.com,bad..name"}, "-domain: \"bad..name\""},
		{"domain literal", []string{"-domain", "[192.0.2.1]"}, "-domain: "},
		{"stray argument", []string{"-listen", "127.0.0.1:0", "oops"}, "unexpected argument \"oops\""},
		{"tls-cert missing", []string{"-tls-cert", missing, "-tls-key", exists}, "-tls-cert: "},
		{"tls-key missing", []string{"-tls-cert", exists, "-tls-key", missing}, "-tls-key: "},
		{"tls-cert alone", []string{"-tls-cert", exists}, "-tls-cert and -tls-key"},
		{"tls pair not a certificate", []string{"-tls-cert", exists, "-tls-key", exists}, "-tls-cert/-tls-key: "},
		{"dkim-selector", []string{"-dkim-selector", "bad selector"}, "-dkim-selector: "},
		{"dkim-selector empty", []string{"-dkim-selector", ""}, "-dkim-selector: "},
		{"dkim-key missing", []string{"-dkim-key", missing}, "-dkim-key: "},
		{"dkim-genkey-type", []string{"-dkim-genkey", filepath.Join(dir, "k.pem"), "-dkim-genkey-type", "dsa"}, "-dkim-genkey-type: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			args := append([]string{"-listen", "127.0.0.1:0", "-submission", "", "-spool", filepath.Join(d, "queue"),
				"-maildir", filepath.Join(d, "mail"), "-data", filepath.Join(d, "data")}, c.args...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "the server must not start: %v\n%s", err, stdout.String())
			assert.Equal(t, 1, ee.ExitCode())
			assert.Contains(t, stderr.String(), "doe-family: "+c.want)
			assert.NotContains(t, stdout.String(), "doe-family ready")
			_, err = os.Stat(filepath.Join(d, "data", "tls"))
			assert.True(t, errors.Is(err, os.ErrNotExist), "no self-signed certificate made")
		})
	}
}

// TestDKIMGenKey: -dkim-genkey writes a key LoadDKIMKey reads (mode
// 0600), prints the record of the key for -domain and -dkim-selector,
// and never overwrites a file.
func TestDKIMGenKey(t *testing.T) {
	for _, typ := range []string{"rsa", "ed25519"} {
		t.Run(typ, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "dkim.pem")
			args := []string{"-dkim-genkey", file, "-dkim-genkey-type", typ, "-domain", "example.net,doe-family.com", "-dkim-selector", "s1"}
			out, err := exec.Command(binary, args...).Output()
			require.NoError(t, err)
			st, err := os.Stat(file)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
			key, err := auth.LoadDKIMKey(file)
			require.NoError(t, err)
			signer, err := auth.NewDKIMSigner("example.net", "s1", key)
			require.NoError(t, err)
			assert.Contains(t, string(out), "publish s1._domainkey.example.net TXT \"v=DKIM1; k="+typ+"; p=")
			// The record, its 255-byte strings joined, is the key's.
			rec := string(out)[strings.Index(string(out), "TXT ")+4:]
			rec = strings.NewReplacer(`" "`, "", `"`, "", "\n", "").Replace(rec)
			assert.Equal(t, signer.DNSRecord(), rec)

			before, _ := os.ReadFile(file)
			_, err = exec.Command(binary, args...).Output()
			require.Error(t, err, "a second run must not overwrite the key")
			after, _ := os.ReadFile(file)
			assert.Equal(t, before, after)
		})
	}
}
