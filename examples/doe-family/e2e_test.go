package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/internal/dnstest"
)

// The end-to-end tests build the real binary and talk to it over loopback
// sockets, with a DNS server and a relayhost sink on loopback.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "doe-family-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "doe-family")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building doe-family: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// sink is the relayhost: a go-smtp server that records what it receives and
// answers DATA with the replies queued in fail (then 250).
type sink struct {
	mu       sync.Mutex
	messages []sinkMessage
	fail     atomic.Int32 // DATA attempts to refuse with 451 before accepting
	addr     string
}

type sinkMessage struct {
	From string
	To   []string
	Data []byte
}

func (s *sink) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &sinkSession{s: s}, nil }

type sinkSession struct {
	s    *sink
	from string
	to   []string
}

func (ss *sinkSession) Mail(from string, _ *gosmtp.MailOptions) error { ss.from = from; return nil }
func (ss *sinkSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.fail.Add(-1) >= 0 {
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	}
	ss.s.mu.Lock()
	ss.s.messages = append(ss.s.messages, sinkMessage{ss.from, ss.to, b})
	ss.s.mu.Unlock()
	return nil
}
func (ss *sinkSession) Reset()        { ss.from, ss.to = "", nil }
func (ss *sinkSession) Logout() error { return nil }

func (s *sink) received() []sinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMessage(nil), s.messages...)
}

func startSink(t *testing.T, addr string) *sink {
	t.Helper()
	s := &sink{addr: addr}
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	srv := gosmtp.NewServer(s)
	srv.Domain = "relayhost.test"
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// env is one doe-family under test with everything around it.
type env struct {
	t                        *testing.T
	dir, spool, maildir      string
	listen, submission, recv string
	dns                      *dnstest.Server
	sink                     *sink
	args                     []string
	cmd                      *exec.Cmd
	exited                   chan struct{} // closed when cmd has exited
	stdout                   *lockedBuffer
	logs                     *lockedBuffer // what the server wrote to stderr (its log), across restarts
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const password = "correct horse battery staple"

func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, spool: filepath.Join(dir, "queue"), maildir: filepath.Join(dir, "mail"),
		listen: freePort(t), submission: freePort(t), recv: freePort(t)}

	// DKIM key for doe-family.com (Ed25519 keeps the test fast).
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	require.NoError(t, err)
	keyFile := filepath.Join(dir, "dkim.pem")
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	key, err := auth.LoadDKIMKey(keyFile)
	require.NoError(t, err)
	signer, err := auth.NewDKIMSigner("doe-family.com", "2022-09", key)
	require.NoError(t, err)

	e.dns = dnstest.New(t,
		`example.org. TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`spf-fail.test. TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`doe-family.com. TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.example.org. TXT "v=DMARC1; p=reject"`,
		`bank.test. TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.bank.test. TXT "v=DMARC1; p=reject"`,
		fmt.Sprintf(`%s TXT "%s"`, dns(signer.DNSName()), signer.DNSRecord()),
	)

	hash, err := auth.HashPassword(password)
	require.NoError(t, err)
	users := filepath.Join(dir, "users")
	require.NoError(t, os.WriteFile(users, []byte("john@doe-family.com:"+hash+"\noutsider@other.test:"+hash+"\n"+harnessUsers(hash)), 0o600))

	sinkAddr := freePort(t)
	e.sink = startSink(t, sinkAddr)
	e.args = append([]string{
		"-listen", e.listen, "-submission", e.submission, "-receiver", e.recv,
		"-dns", e.dns.Addr(), "-spool", e.spool, "-maildir", e.maildir, "-data", filepath.Join(dir, "data"),
		"-relayhost", sinkAddr, "-users", users, "-dkim-key", keyFile, "-hostname", "mx.doe-family.com",
		"-retry-min", "1s",
	}, extra...)
	e.start()
	return e
}

func dns(name string) string { return strings.TrimSuffix(name, ".") + "." }

// start runs the server and waits until it says it is ready. The ports
// come from freePort, which closes its listener before the server binds
// the port, so another test process can take one in between (go test runs
// packages in parallel, and their client sockets draw from the same
// ephemeral range). The server then exits with "address already in use",
// and start tries again on fresh ports.
func (e *env) start() {
	e.t.Helper()
	for attempt := 1; ; attempt++ {
		err := e.tryStart()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			require.NoError(e.t, err)
		}
		e.t.Logf("%v; trying new ports", err)
		e.newPorts()
	}
}

var errPortTaken = errors.New("a port was taken before the server bound it")

// tryStart starts the server once and returns when it is ready, has
// exited, or has taken 20 s.
func (e *env) tryStart() error {
	e.stdout = &lockedBuffer{}
	stderr := &lockedBuffer{}
	cmd := exec.Command(binary, e.args...)
	cmd.Stdout = e.stdout
	if e.logs == nil {
		e.logs = &lockedBuffer{}
	}
	cmd.Stderr = io.MultiWriter(&testLogWriter{t: e.t}, &firstBytes{w: stderr, left: 64 << 10}, e.logs)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	e.cmd, e.exited = cmd, exited
	e.t.Cleanup(func() {
		cmd.Process.Kill() // fails harmlessly when it has exited
		<-exited
	})
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(e.stdout.String(), "doe-family ready") {
		select {
		case <-exited:
			if strings.Contains(stderr.String(), "address already in use") {
				return fmt.Errorf("%w: %s", errPortTaken, strings.TrimSpace(stderr.String()))
			}
			return fmt.Errorf("server exited before it was ready (%v); stdout:\n%s\nstderr:\n%s", cmd.ProcessState, e.stdout, stderr)
		case <-deadline.C:
			return fmt.Errorf("server not ready after 20 s; stdout:\n%s\nstderr:\n%s", e.stdout, stderr)
		case <-tick.C:
		}
	}
	return nil
}

// firstBytes passes on the first left bytes written to it and drops the
// rest: start reads the server's stderr up to "ready", and a long test
// must not keep all its logs.
type firstBytes struct {
	w    io.Writer
	left int
}

func (f *firstBytes) Write(p []byte) (int, error) {
	if f.left > 0 {
		n := min(len(p), f.left)
		f.left -= n
		f.w.Write(p[:n])
	}
	return len(p), nil
}

// newPorts gives the server fresh listening ports.
func (e *env) newPorts() {
	fresh := map[string]string{}
	for _, p := range []*string{&e.listen, &e.submission, &e.recv} {
		old := *p
		*p = freePort(e.t)
		fresh[old] = *p
	}
	for i, arg := range e.args {
		if p, ok := fresh[arg]; ok {
			e.args[i] = p
		}
	}
}

func (e *env) stop(sig syscall.Signal) {
	e.t.Helper()
	require.NoError(e.t, e.cmd.Process.Signal(sig))
	select {
	case <-e.exited:
	case <-time.After(40 * time.Second):
		e.cmd.Process.Kill()
		e.t.Fatal("server did not stop")
	}
}

type testLogWriter struct {
	t  *testing.T
	mu sync.Mutex
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if testing.Verbose() {
		w.t.Logf("server: %s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

func message(from, to, subject, body string) string {
	return "From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject +
		"\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject + "@test>\r\n\r\n" + body + "\r\n"
}

// send runs one transaction on addr; it returns the first error reply.
func send(t *testing.T, addr, helo string, tlsAuth bool, from string, to []string, msg string) error {
	t.Helper()
	var c *gosmtp.Client
	var err error
	if tlsAuth {
		c, err = gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = gosmtp.Dial(addr)
	}
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello(helo))
	if tlsAuth {
		if err := c.Auth(sasl.NewPlainClient("", from, password)); err != nil {
			return err
		}
	}
	if err := transact(c, from, to, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

func smtpCode(t *testing.T, err error) (int, string) {
	t.Helper()
	var se *gosmtp.SMTPError
	require.True(t, errors.As(err, &se), "want an SMTP error reply, got %v", err)
	return se.Code, fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
}

// waitFiles waits until dir holds n files and returns their contents.
func waitFiles(t *testing.T, dir string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		entries, _ := os.ReadDir(dir)
		if len(entries) >= n {
			var out []string
			for _, en := range entries {
				b, err := os.ReadFile(filepath.Join(dir, en.Name()))
				require.NoError(t, err)
				out = append(out, string(b))
			}
			return out
		}
		require.True(t, time.Now().Before(deadline), "waiting for %d files in %s, have %d", n, dir, len(entries))
		time.Sleep(20 * time.Millisecond)
	}
}

func waitSink(t *testing.T, s *sink, n int) []sinkMessage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(s.received()) < n {
		require.True(t, time.Now().Before(deadline), "waiting for %d messages at the relayhost", n)
		time.Sleep(20 * time.Millisecond)
	}
	return s.received()
}

func TestDoeFamily(t *testing.T) {
	e := newEnv(t)

	t.Run("relay refused from outside", func(t *testing.T) {
		err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"victim@other.test"}, message("someone@example.org", "victim@other.test", "relay", "x"))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 554, code)
		assert.Equal(t, "5.7.1", enh)
	})

	t.Run("outside sender to local user is delivered to the maildir", func(t *testing.T) {
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "hello-jane", "hi jane")))
		files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
		assert.Contains(t, files[0], "Subject: hello-jane")
		assert.Contains(t, files[0], "Received-SPF: pass")
		assert.Contains(t, files[0], "Authentication-Results: mx.doe-family.com")
	})

	t.Run("DMARC pass is delivered, DMARC fail under p=reject is quarantined", func(t *testing.T) {
		// SPF passes for example.org and aligns with the From domain.
		require.NoError(t, send(t, e.listen, "client.example.org", false, "news@example.org", []string{"dmarc@doe-family.com"}, message("news@example.org", "dmarc@doe-family.com", "dmarc-pass", "x")))
		files := waitFiles(t, filepath.Join(e.maildir, "dmarc", "new"), 1)
		assert.Contains(t, files[0], "dmarc=pass")
		// SPF passes for the envelope domain example.org, but the From
		// header claims bank.test, which publishes p=reject: no aligned pass.
		require.NoError(t, send(t, e.listen, "client.example.org", false, "news@example.org", []string{"dmarc@doe-family.com"}, message("ceo@bank.test", "dmarc@doe-family.com", "dmarc-fail", "x")))
		deadline := time.Now().Add(20 * time.Second)
		for {
			q, _ := filepath.Glob(filepath.Join(e.spool, "quarantine", "dmarc", "*"))
			if len(q) > 0 {
				break
			}
			require.True(t, time.Now().Before(deadline), "the DMARC failure never reached quarantine/dmarc")
			time.Sleep(20 * time.Millisecond)
		}
		files = waitFiles(t, filepath.Join(e.maildir, "dmarc", "new"), 1)
		assert.Len(t, files, 1, "the DMARC failure must not be delivered")
	})

	t.Run("SPF fail is rejected", func(t *testing.T) {
		err := send(t, e.listen, "client.example.org", false, "spoofer@spf-fail.test", []string{"jane@doe-family.com"}, message("spoofer@spf-fail.test", "jane@doe-family.com", "spf", "x"))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 550, code)
		assert.Equal(t, "5.7.23", enh)
	})

	t.Run("submission needs AUTH", func(t *testing.T) {
		c, err := gosmtp.DialStartTLS(e.submission, &tls.Config{InsecureSkipVerify: true})
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.Hello("laptop.example.net"))
		code, enh := smtpCode(t, c.Mail("john@doe-family.com", nil))
		assert.Equal(t, 530, code)
		assert.Equal(t, "5.7.0", enh)
	})

	t.Run("authenticated local user relays, DKIM-signed", func(t *testing.T) {
		require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"}, message("john@doe-family.com", "friend@other.test", "signed", "a signed message")))
		msgs := waitSink(t, e.sink, 1)
		got := msgs[len(msgs)-1]
		assert.Equal(t, []string{"friend@other.test"}, got.To)
		assert.Contains(t, string(got.Data), "DKIM-Signature:")
		verifications, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				return e.dns.Resolver().LookupTXT(context.Background(), domain)
			},
		})
		require.NoError(t, err)
		require.Len(t, verifications, 1)
		assert.NoError(t, verifications[0].Err, "the signature must verify")
		assert.Equal(t, "doe-family.com", verifications[0].Domain)
	})

	t.Run("an account outside the local domains never relays", func(t *testing.T) {
		err := send(t, e.submission, "laptop.example.net", true, "outsider@other.test", []string{"friend@elsewhere.test"}, message("outsider@other.test", "friend@elsewhere.test", "outsider", "x"))
		code, _ := smtpCode(t, err)
		assert.GreaterOrEqual(t, code, 500)
	})
}

// TestRestartResumesQueue: a message the relayhost deferred is still in the
// queue after the server was killed, and the restarted server delivers it.
// On each store.
func TestRestartResumesQueue(t *testing.T) {
	forStores(t, restartResumesQueue)
}

func restartResumesQueue(t *testing.T, st storeKind) {
	e := newEnv(t, st.args...)
	e.sink.fail.Store(1000) // refuse every delivery for now
	require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"}, message("john@doe-family.com", "friend@other.test", "resume", "resume me")))
	e.waitCount("deferred", 1) // the first attempt was deferred
	e.stop(syscall.SIGKILL)
	e.sink.fail.Store(0)
	e.start()
	msgs := waitSink(t, e.sink, 1)
	assert.Contains(t, string(msgs[0].Data), "Subject: resume")
	e.stop(syscall.SIGTERM)
	assert.Contains(t, e.stdout.String(), "doe-family stopped", "graceful shutdown on SIGTERM")
}

// TestAntivirus sends EICAR and a clean message through the real clamsmtpd
// and clamd.
func TestAntivirus(t *testing.T) {
	for _, tool := range []string{"clamd", "clamsmtpd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 != nil {
				if os.Getenv("MTAKIT_INTEGRATION") == "1" {
					t.Fatalf("%s is required under MTAKIT_INTEGRATION=1: %v", tool, err)
				}
				t.Skipf("%s not installed (apt-get install clamav-daemon clamsmtp clamav); skipping the antivirus end-to-end test", tool)
			}
		}
	}
	clamsmtpd, recv := runClamAV(t)

	// 20 transactions at once below, right after three whose server
	// side may still be closing: above the default 20 per client address.
	e := newEnv(t, "-clamav", clamsmtpd, "-receiver", recv, "-max-connections-per-ip", "100")
	eicar := `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "virus", eicar)))
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, message("someone@example.org", "jane@doe-family.com", "clean", "nothing to see")))

	// A sender's own X-Virus-Infected field does not get a clean message
	// quarantined: only the filter's verdict counts.
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"}, "X-Virus-Infected: forged\r\n"+message("someone@example.org", "jane@doe-family.com", "forged", "clean too")))

	// 20 concurrent transactions, every other one infected: each gets its
	// own message back from the filter, so exactly the clean ones arrive,
	// each with its own body.
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("clean body %d", i)
			subject := fmt.Sprintf("parallel-clean-%d", i)
			if i%2 == 1 {
				body, subject = eicar, fmt.Sprintf("parallel-virus-%d", i)
			}
			errs[i] = send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"par@doe-family.com"},
				message("someone@example.org", "par@doe-family.com", subject, body))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "parallel message %d", i)
	}
	parallel := waitFiles(t, filepath.Join(e.maildir, "par", "new"), 10)
	time.Sleep(300 * time.Millisecond)
	parallel = waitFiles(t, filepath.Join(e.maildir, "par", "new"), 10)
	require.Len(t, parallel, 10, "exactly the 10 clean messages are delivered")
	for _, f := range parallel {
		i := strings.Index(f, "Subject: parallel-clean-")
		require.GreaterOrEqual(t, i, 0, "only clean messages are delivered")
		var n int
		fmt.Sscanf(f[i+len("Subject: parallel-clean-"):], "%d", &n)
		assert.Contains(t, f, fmt.Sprintf("clean body %d", n), "each transaction got its own message back")
		assert.Contains(t, f, "X-Virus-Scanned", "scanned by clamsmtpd")
	}

	files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 2)
	require.Len(t, files, 2)
	joined := strings.Join(files, "\n")
	assert.Contains(t, joined, "Subject: clean")
	assert.Contains(t, joined, "Subject: forged")
	assert.NotContains(t, joined, "X-Virus-Infected")
	quarantined, _ := filepath.Glob(filepath.Join(e.spool, "quarantine", "virus_q", "*"))
	assert.Len(t, quarantined, 11, "the EICAR messages (1 + 10 parallel) must be in quarantine virus_q")
	time.Sleep(200 * time.Millisecond)
	files = waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 2)
	assert.Len(t, files, 2, "the EICAR message must not be delivered")
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestRemoteClosesMidData: a relayhost that drops the connection in the
// middle of DATA leaves the message deferred, not lost and not bounced. On
// each store.
func TestRemoteClosesMidData(t *testing.T) {
	forStores(t, remoteClosesMidData)
}

func remoteClosesMidData(t *testing.T, st storeKind) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var sessions atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sessions.Add(1)
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				fmt.Fprint(c, "220 flaky.test ESMTP\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
					case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
						fmt.Fprint(c, "250 flaky.test\r\n")
					case cmd == "DATA":
						fmt.Fprint(c, "354 go on\r\n")
						r.ReadString('\n') // one line of the message, then hang up
						return
					case cmd == "QUIT":
						fmt.Fprint(c, "221 bye\r\n")
						return
					default:
						fmt.Fprint(c, "250 ok\r\n")
					}
				}
			}()
		}
	}()

	e := newEnv(t, append([]string{"-relayhost", ln.Addr().String(), "-retry-min", "1h"}, st.args...)...)
	require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"}, message("john@doe-family.com", "friend@other.test", "flaky", "body")))
	e.waitCount("deferred", 1)
	assert.GreaterOrEqual(t, sessions.Load(), int32(1), "the relayhost was tried")
	assert.Zero(t, e.counts()["dead"], "a connection lost mid-DATA is temporary, never a bounce")
	_, err = os.Stat(filepath.Join(e.maildir, "john"))
	assert.True(t, os.IsNotExist(err), "no bounce delivered to the sender")
}

// TestStartRetriesTakenPort checks the harness itself: when a port picked
// for the server is taken before the server binds it, start moves the
// server to fresh ports instead of failing the test.
func TestStartRetriesTakenPort(t *testing.T) {
	e := newEnv(t)
	e.stop(syscall.SIGTERM)
	taken, err := net.Listen("tcp", e.submission)
	require.NoError(t, err)
	defer taken.Close()
	e.start()
	require.NotEqual(t, taken.Addr().String(), e.submission)
	require.NoError(t, sendFrom("127.0.0.1", e.listen, "someone@example.org", []string{"jane@doe-family.com"},
		message("someone@example.org", "jane@doe-family.com", "after retry", "served")))
}

// runClamAV starts clamd and clamsmtpd (delegate/testdata/clamav-env.sh)
// on free loopback ports, clamsmtpd passing clean mail on to recv, and
// returns their addresses. A free port may be taken by a parallel test
// before the daemon binds it: then it starts again, with other ports.
func runClamAV(t *testing.T) (clamsmtpd, recv string) {
	t.Helper()
	script, err := filepath.Abs("../../delegate/testdata/clamav-env.sh")
	require.NoError(t, err)
	var avDir string
	for try := 1; ; try++ {
		// A free port may be taken by a parallel test before the daemon
		// binds it: then again, with other ports.
		recv, clamsmtpd = freePort(t), freePort(t)
		clamd := freePort(t)
		avDir = t.TempDir()
		start := exec.Command(script, "start", avDir)
		start.Env = append(os.Environ(), "CLAMD_PORT="+portOf(clamd), "CLAMSMTP_PORT="+portOf(clamsmtpd), "CLAMSMTP_OUT="+recv)
		out, err := start.CombinedOutput()
		if err != nil && try < 3 && strings.Contains(string(out), "Address already in use") {
			exec.Command(script, "stop", avDir).Run()
			continue
		}
		require.NoError(t, err, "clamav-env.sh start: %s", out)
		break
	}
	dir := avDir
	t.Cleanup(func() { exec.Command(script, "stop", dir).Run() })
	return clamsmtpd, recv
}
