package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// stored is what the test queue received for one message.
type stored struct {
	ID         string
	From       string
	Rcpts      []string
	Quarantine string
	Data       string
	Path       string
}

// fileQueue writes each message to a file in a temp dir with fsync and
// records what it got.
type fileQueue struct {
	dir   string
	mu    sync.Mutex
	msgs  []stored
	fail  error
	delay chan struct{} // when set, Enqueue waits for it to close
	got   chan string   // receives the ID of each message as Enqueue starts
}

func newFileQueue(t testing.TB) *fileQueue {
	return &fileQueue{dir: t.TempDir(), got: make(chan string, 100)}
}

func (q *fileQueue) Enqueue(ctx context.Context, tx *policy.Transaction, m *policy.Message) error {
	select {
	case q.got <- tx.ID:
	default:
	}
	if q.delay != nil {
		select {
		case <-q.delay:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if q.fail != nil {
		return q.fail
	}
	p := filepath.Join(q.dir, tx.ID+".eml")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	var b strings.Builder
	if _, err := m.WriteTo(io.MultiWriter(f, &b)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s := stored{ID: tx.ID, From: tx.From.String(), Quarantine: tx.Quarantine(), Data: b.String(), Path: p}
	for _, r := range tx.Rcpts {
		s.Rcpts = append(s.Rcpts, r.Addr.String())
	}
	q.mu.Lock()
	q.msgs = append(q.msgs, s)
	q.mu.Unlock()
	return nil
}

func (q *fileQueue) all() []stored {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]stored(nil), q.msgs...)
}

// mapAuth is an Authenticator over a map; a user named "locked" gets a
// temporary error.
type mapAuth map[string]string

type tempErr struct{}

func (tempErr) Error() string   { return "too many failures" }
func (tempErr) Temporary() bool { return true }

// badCredentials refuses credentials, as auth.ErrInvalidCredentials does.
type badCredentials struct{}

func (badCredentials) Error() string   { return "bad credentials" }
func (badCredentials) Temporary() bool { return false }

func (a mapAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) error {
	if user == "locked" {
		return fmt.Errorf("rate limit: %w", tempErr{})
	}
	if p, ok := a[user]; ok && p == pass {
		return nil
	}
	if user == "database-down" {
		return errors.New("credential store unavailable")
	}
	return badCredentials{}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MTAKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

var (
	tlsOnce sync.Once
	tlsCert tls.Certificate
	tlsErr  error
)

func testTLS(t testing.TB) *tls.Config {
	tlsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mtakit-smtp-tls-")
		if err != nil {
			tlsErr = err
			return
		}
		tlsCert, tlsErr = SelfSignedCertificate(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"mx.test", "127.0.0.1"})
		os.RemoveAll(dir)
	})
	require.NoError(t, tlsErr)
	return &tls.Config{Certificates: []tls.Certificate{tlsCert}}
}

func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"}
}

// acceptAll accepts every recipient (the default denies).
func acceptAll(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict {
	return policy.Accept()
}

type harness struct {
	srv   *Server
	queue *fileQueue
	addrs map[string]string // listener name -> address
	errc  chan error
}

// start runs a server on loopback with one listener per lc.
func start(t testing.TB, cfg Config, lcs ...Listener) *harness {
	t.Helper()
	h := &harness{addrs: map[string]string{}, errc: make(chan error, len(lcs))}
	if cfg.Queue == nil {
		h.queue = newFileQueue(t)
		cfg.Queue = h.queue
	}
	if cfg.Chain == nil {
		cfg.Chain = (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll)
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "mx.test"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = t.TempDir()
	}
	if len(lcs) == 0 {
		lcs = []Listener{{Name: "mta", Role: RoleMTA}}
	}
	srv, err := NewServer(cfg)
	require.NoError(t, err)
	h.srv = srv
	for _, lc := range lcs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		h.addrs[lc.Name] = l.Addr().String()
		go func() { h.errc <- srv.Serve(context.Background(), l, lc) }()
	}
	t.Cleanup(func() { srv.Close() })
	return h
}

func (h *harness) addr() string {
	for _, a := range h.addrs {
		if len(h.addrs) == 1 {
			return a
		}
	}
	return h.addrs["mta"]
}

// rawConn is a scripted client over net/textproto-like line I/O.
type rawConn struct {
	t testing.TB
	net.Conn
	r *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, Conn: c, r: bufio.NewReader(c)}
}

// reply reads one reply; it returns the code and the full text (lines
// joined with "\n"), or code 0 on EOF.
func (c *rawConn) reply() (int, string) {
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if len(lines) == 0 {
				return 0, err.Error()
			}
			return -1, strings.Join(lines, "\n")
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			code := 0
			fmt.Sscanf(line, "%d", &code)
			return code, strings.Join(lines, "\n")
		}
	}
}

func (c *rawConn) send(s string) {
	_, err := io.WriteString(c.Conn, s)
	require.NoError(c.t, err)
}

// cmd sends one line and reads its reply; code 0 when the connection is
// gone.
func (c *rawConn) cmd(line string) (int, string) {
	if _, err := io.WriteString(c.Conn, line+"\r\n"); err != nil {
		return 0, err.Error()
	}
	return c.reply()
}

// expect sends line and requires the reply code.
func (c *rawConn) expect(line string, code int) string {
	c.t.Helper()
	got, text := c.cmd(line)
	require.Equal(c.t, code, got, "reply to %q: %s", line, text)
	return text
}

// closed reports whether the server closes the connection within 10s;
// what it still sends is discarded.
func (c *rawConn) closed() bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.r)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// send one message with the go-smtp client; returns the DATA reply error.
func sendMail(t testing.TB, addr, from string, to []string, body string) error {
	t.Helper()
	c, err := gosmtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	ok := 0
	for _, r := range to {
		if err := c.Rcpt(r, nil); err == nil {
			ok++
		}
	}
	if ok == 0 {
		return errors.New("no recipient accepted")
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	io.WriteString(w, body)
	return w.Close()
}

const simpleBody = "From: a@client.test\r\nTo: b@mx.test\r\nSubject: hi\r\n\r\nHello.\r\n"

func smtpCode(err error) int {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// waitFor polls cond for up to 10s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// unfold joins folded header lines.
func unfold(s string) string {
	s = strings.ReplaceAll(s, "\r\n\t", " ")
	return strings.ReplaceAll(s, "\r\n ", " ")
}

func encodeB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func dialNet(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 2*time.Second) }

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 64<<10) }
