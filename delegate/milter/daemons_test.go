package milter_test

// End-to-end tests against the real daemons (Debian's rspamd, opendkim,
// clamav-milter, started by internal/milterd on loopback ports): an SMTP
// client talks to a real smtp.Server whose chain holds the milter rules,
// and the tests look at the SMTP replies and at what was queued.
// Without the daemons they skip, unless MTAKIT_INTEGRATION=1.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/internal/milterd"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// stored is a message the server queued.
type stored struct {
	id, from   string
	rcpts      []string
	quarantine string
	discarded  bool
	dkim       []auth.DKIMResult // our verifier's results, when it ran
	raw        string
}

// store is the server's queue: it keeps what it is given.
type store struct {
	mu   sync.Mutex
	msgs []stored
}

func (q *store) Enqueue(_ context.Context, tx *policy.Transaction, m *policy.Message) error {
	var b bytes.Buffer
	if _, err := m.WriteTo(&b); err != nil {
		return err
	}
	s := stored{id: tx.ID, from: tx.From.String(), quarantine: tx.Quarantine(), raw: b.String()}
	_, s.discarded = milter.DiscardedKey.Get(tx)
	s.dkim, _ = auth.DKIMResultsKey.Get(tx)
	for _, r := range tx.Rcpts {
		s.rcpts = append(s.rcpts, r.Addr.String())
	}
	q.mu.Lock()
	q.msgs = append(q.msgs, s)
	q.mu.Unlock()
	return nil
}

func (q *store) all() []stored {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]stored(nil), q.msgs...)
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tLog struct{ t *testing.T }

func (w tLog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newMilter makes the Milter for a daemon, with timeouts short enough for
// a test and long enough for a loaded CI machine.
func newMilter(t *testing.T, name string, d *milterd.Daemon) *milter.Milter {
	t.Helper()
	m, err := milter.New(milter.Options{
		Name: name, Addr: d.Spec(),
		ConnectTimeout: 10 * time.Second, CommandTimeout: 30 * time.Second, EOMTimeout: 60 * time.Second,
		Hostname: "mx.mtakit.test", TempDir: t.TempDir(), Logger: logger(t),
	})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

// serveWith runs an smtp.Server on loopback whose chain holds the milters
// (milter.Register), then an rcpt rule accepting every recipient, then
// the preq rules after (which see the message as the milters left it).
func serveWith(t *testing.T, ms []*milter.Milter, after ...policy.MessageRule) (addr string, q *store) {
	t.Helper()
	chain := &policy.Chain{Logger: logger(t), RuleTimeout: 2 * time.Minute}
	milter.Register(chain, ms...)
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	for i, r := range after {
		chain.PreQ("after-"+string(rune('a'+i)), r)
	}
	q = &store{}
	srv, err := smtp.NewServer(smtp.Config{
		Hostname: "mx.mtakit.test", Chain: chain, Queue: q, SpoolDir: t.TempDir(), Logger: logger(t),
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(context.Background(), ln, smtp.Listener{Name: "mta", Role: smtp.RoleMTA})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String(), q
}

// send delivers raw from from to rcpts over SMTP and returns the reply to
// the end of DATA (nil for 250).
func send(t *testing.T, addr, from string, rcpts []string, raw string) error {
	t.Helper()
	c, err := gosmtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.mtakit.test"))
	require.NoError(t, c.Mail(from, nil))
	for _, r := range rcpts {
		require.NoError(t, c.Rcpt(r, nil))
	}
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.Copy(w, strings.NewReader(raw))
	require.NoError(t, err)
	err = w.Close()
	c.Quit()
	return err
}

func smtpErr(t *testing.T, err error) *gosmtp.SMTPError {
	t.Helper()
	var se *gosmtp.SMTPError
	require.True(t, errors.As(err, &se), "want an SMTP error, got %v", err)
	return se
}

func message(from, to, subject, body string, extra ...string) string {
	var b strings.Builder
	b.WriteString("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\n")
	b.WriteString("Date: Fri, 04 Dec 2026 20:00:00 +0000\r\n")
	b.WriteString("Message-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@mtakit.test>\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// fieldValue returns the unfolded value of the first header field name of
// raw, and whether there is one.
func fieldValue(raw, name string) (string, bool) {
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	for i, l := range lines {
		n, v, ok := strings.Cut(l, ":")
		if !ok || !strings.EqualFold(n, name) {
			continue
		}
		for _, c := range lines[i+1:] {
			if !strings.HasPrefix(c, " ") && !strings.HasPrefix(c, "\t") {
				break
			}
			v += " " + strings.TrimSpace(c)
		}
		return strings.TrimSpace(v), true
	}
	return "", false
}

func TestRspamdThroughSMTP(t *testing.T) {
	d := milterd.Rspamd(t, milterd.RspamdConfig{})
	addr, q := serveWith(t, []*milter.Milter{newMilter(t, "rspamd", d)})
	from, to := "alice@example.org", "bob@example.com"
	body := "Hello Bob,\r\nthe garden party is on Sunday at three.\r\n"

	t.Run("clean message gets rspamd's headers", func(t *testing.T) {
		require.NoError(t, send(t, addr, from, []string{to}, message(from, to, "garden party", body)))
		msgs := q.all()
		require.Len(t, msgs, 1)
		m := msgs[0]
		res, ok := fieldValue(m.raw, "X-Spamd-Result")
		require.True(t, ok, "no X-Spamd-Result in\n%s", m.raw)
		assert.Contains(t, res, "default: False")
		action, _ := fieldValue(m.raw, "X-Rspamd-Action")
		assert.Equal(t, "no action", action)
		qid, _ := fieldValue(m.raw, "X-Rspamd-Queue-Id")
		assert.Equal(t, m.id, qid, "rspamd got our queue ID in the i macro")
		assert.Contains(t, m.raw, "\r\n\r\n"+body, "body unchanged")
	})

	t.Run("GTUBE is rejected with rspamd's reply", func(t *testing.T) {
		n := len(q.all())
		se := smtpErr(t, send(t, addr, from, []string{to}, message(from, to, "gtube", body+milterd.GTUBE+"\r\n")))
		assert.Equal(t, 554, se.Code)
		assert.Equal(t, gosmtp.EnhancedCode{5, 7, 1}, se.EnhancedCode)
		assert.Equal(t, "Gtube pattern", se.Message)
		assert.Len(t, q.all(), n, "nothing queued")
	})

	t.Run("soft reject is a 4xx", func(t *testing.T) {
		n := len(q.all())
		se := smtpErr(t, send(t, addr, from, []string{to}, message(from, to, "soft", body, milterd.SoftRejectHeader+": soft-reject")))
		assert.Equal(t, 451, se.Code)
		assert.Equal(t, gosmtp.EnhancedCode{4, 7, 1}, se.EnhancedCode)
		assert.Equal(t, milterd.SoftRejectMessage, se.Message)
		assert.Len(t, q.all(), n, "nothing queued")
	})

	t.Run("add header action sets X-Spam", func(t *testing.T) {
		require.NoError(t, send(t, addr, from, []string{to}, message(from, to, "spammy", body+milterd.GTUBEAddHeader+"\r\n")))
		msgs := q.all()
		m := msgs[len(msgs)-1]
		spam, ok := fieldValue(m.raw, "X-Spam")
		assert.True(t, ok, "no X-Spam in\n%s", m.raw)
		assert.Equal(t, "Yes", spam)
	})
}

// dkimRecord is the DNS TXT record publishing key's public half.
func dkimRecord(t *testing.T, key *rsa.PrivateKey) string {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// dkimpyVerify has dkimpy (python3-dkim), the independent verifier, check
// signed against the key record txt: "pass" or "fail".
func dkimpyVerify(t *testing.T, signed, txt string) string {
	t.Helper()
	py := "/usr/bin/python3"
	if exec.Command(py, "-c", "import dkim").Run() != nil {
		msg := "python3-dkim (dkimpy) is not installed (apt-get install python3-dkim)"
		if os.Getenv("MTAKIT_INTEGRATION") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	f := filepath.Join(t.TempDir(), "key.txt")
	require.NoError(t, os.WriteFile(f, []byte(txt), 0o600))
	cmd := exec.Command(py, filepath.Join("..", "..", "auth", "testdata", "dkim", "dkimpy.py"), "verify", f)
	cmd.Stdin = strings.NewReader(signed)
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

func TestOpenDKIMThroughSMTP(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	txt := dkimRecord(t, key)
	dns := dnstest.New(t, `sel1._domainkey.example.com. TXT "`+txt+`"`)
	from, to := "alice@example.com", "bob@example.org"
	raw := message(from, to, "signed by opendkim", "Hello Bob,\r\nsee you on Sunday.\r\n")

	// The signer: the SMTP client comes from 127.0.0.1, one of opendkim's
	// InternalHosts, so mail of example.com is signed. Our verifier runs
	// after the milter, on the message as opendkim left it.
	signer := milterd.OpenDKIM(t, milterd.OpenDKIMConfig{Mode: "s", Domain: "example.com", Selector: "sel1", Key: key, DNS: dns.Addr()})
	verify := auth.VerifyDKIM(auth.DKIMVerifyOptions{Resolver: dns.Resolver(), AuthServID: "mx.mtakit.test"})
	addr, q := serveWith(t, []*milter.Milter{newMilter(t, "opendkim", signer)}, verify)
	require.NoError(t, send(t, addr, from, []string{to}, raw))
	msgs := q.all()
	require.Len(t, msgs, 1)
	signed := msgs[0].raw
	sig, ok := fieldValue(signed, "DKIM-Signature")
	require.True(t, ok, "no DKIM-Signature in\n%s", signed)
	assert.Contains(t, sig, "d=example.com")
	assert.Contains(t, sig, "s=sel1")
	require.Len(t, msgs[0].dkim, 1, "our verifier saw one signature")
	assert.Equal(t, "pass", string(msgs[0].dkim[0].Result), "our verifier: %+v", msgs[0].dkim[0])
	assert.Equal(t, "example.com", msgs[0].dkim[0].Domain)
	assert.Equal(t, "pass", dkimpyVerify(t, signed, txt), "dkimpy verifies opendkim's signature")
	tampered := strings.Replace(signed, "Sunday", "Monday", 1)
	assert.Equal(t, "fail", dkimpyVerify(t, tampered, txt), "dkimpy sees a changed body")

	// The verifier: 127.0.0.1 is not internal here, so opendkim verifies,
	// against the key served by the loopback DNS server, and adds its
	// Authentication-Results.
	verifier := milterd.OpenDKIM(t, milterd.OpenDKIMConfig{Mode: "v", DNS: dns.Addr(), InternalHosts: []string{"192.0.2.99"}})
	addr, q = serveWith(t, []*milter.Milter{newMilter(t, "opendkim", verifier)})
	for i, tc := range []struct {
		name, raw, want string
	}{
		{"signed", stripReceived(signed), "dkim=pass"},
		{"tampered", stripReceived(tampered), "dkim=fail"},
		{"unsigned", raw, "dkim=none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, send(t, addr, from, []string{to}, tc.raw))
			msgs := q.all()
			require.Len(t, msgs, i+1)
			ar, ok := fieldValue(msgs[i].raw, "Authentication-Results")
			require.True(t, ok, "no Authentication-Results in\n%s", msgs[i].raw)
			assert.True(t, strings.HasPrefix(ar, "opendkim.test;"), ar)
			assert.Contains(t, ar, tc.want)
		})
	}
}

// stripReceived removes the Received fields our server added, so that a
// message can be sent again as a client would.
func stripReceived(raw string) string {
	head, body, _ := strings.Cut(raw, "\r\n\r\n")
	var keep []string
	skipping := false
	for _, l := range strings.Split(head, "\r\n") {
		if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
			if !skipping {
				keep = append(keep, l)
			}
			continue
		}
		skipping = strings.HasPrefix(strings.ToLower(l), "received:")
		if !skipping {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\r\n") + "\r\n\r\n" + body
}

func TestClamavMilterThroughSMTP(t *testing.T) {
	from, to := "alice@example.org", "bob@example.com"
	clean := message(from, to, "clean", "Nothing to see here.\r\n")
	infected := message(from, to, "infected", "Here it is:\r\n"+milterd.EICAR+"\r\n")

	t.Run("Reject", func(t *testing.T) {
		d := milterd.ClamavMilter(t, milterd.ClamavMilterConfig{OnInfected: "Reject", RejectMsg: "Virus found: %v"})
		addr, q := serveWith(t, []*milter.Milter{newMilter(t, "clamav", d)})
		require.NoError(t, send(t, addr, from, []string{to}, clean))
		require.Len(t, q.all(), 1)
		status, _ := fieldValue(q.all()[0].raw, "X-Virus-Status")
		assert.Equal(t, "Clean", status)
		scanned, _ := fieldValue(q.all()[0].raw, "X-Virus-Scanned")
		assert.Contains(t, scanned, "clamav.test")

		se := smtpErr(t, send(t, addr, from, []string{to}, infected))
		assert.Equal(t, 550, se.Code)
		assert.Equal(t, gosmtp.EnhancedCode{5, 7, 1}, se.EnhancedCode)
		assert.Equal(t, "Virus found: Eicar-Test-Signature.UNOFFICIAL", se.Message)
		assert.Len(t, q.all(), 1, "the virus was not queued")
	})

	t.Run("Quarantine", func(t *testing.T) {
		d := milterd.ClamavMilter(t, milterd.ClamavMilterConfig{OnInfected: "Quarantine"})
		addr, q := serveWith(t, []*milter.Milter{newMilter(t, "clamav", d)})
		require.NoError(t, send(t, addr, from, []string{to}, infected), "a quarantined message is accepted")
		msgs := q.all()
		require.Len(t, msgs, 1)
		assert.Equal(t, milter.DefaultQuarantine, msgs[0].quarantine)
		status, _ := fieldValue(msgs[0].raw, "X-Virus-Status")
		assert.Equal(t, "Infected (Eicar-Test-Signature.UNOFFICIAL)", status)
	})
}
