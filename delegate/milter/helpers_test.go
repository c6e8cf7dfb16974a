package milter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// testLogger sends logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// allActions are the modifications the fake milter asks for.
const allActions = gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt | gomilter.OptRemoveRcpt |
	gomilter.OptChangeHeader | gomilter.OptQuarantine | gomilter.OptChangeFrom | gomilter.OptAddRcptWithArgs

// macroNames are the macros the fake milter records.
var macroNames = []string{"j", "v", "_", "i", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}",
	"{client_addr}", "{client_port}", "{client_name}", "{client_ptr}", "{tls_version}", "{cipher}",
	"{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}", "{rcpt_addr}", "{rcpt_host}"}

// fake is a milter on loopback, built on go-milter's server side. Its
// hooks (nil: continue) decide; it records what it was sent.
type fake struct {
	t    testing.TB
	addr string // "inet:127.0.0.1:port" or "unix:/path"

	// Hooks, set before use.
	connect func(host, family string, port uint16, addr string) (*gomilter.Response, error)
	helo    func(name string) (*gomilter.Response, error)
	mail    func(from, args string) (*gomilter.Response, error)
	rcpt    func(to, args string) (*gomilter.Response, error)
	header  func(name, value string) (*gomilter.Response, error)
	body    func(chunk []byte) (*gomilter.Response, error)
	eom     func(m gomilter.Modifier, f *fakeConn) (*gomilter.Response, error)
	// protocol is what the milter asks of the MTA (go-milter's WithProtocol).
	protocol gomilter.OptProtocol

	mu       sync.Mutex
	events   []string
	macros   map[string]map[string]string // stage → name → value
	messages []string                     // each message as the milter saw it (header fields, blank line, body)
	conns    int
	closed   chan struct{} // a value per connection closed (Cleanup)
}

func startFake(t testing.TB, network string, edit func(*fake)) *fake {
	t.Helper()
	f := &fake{t: t, macros: map[string]map[string]string{}, closed: make(chan struct{}, 100)}
	if edit != nil {
		edit(f)
	}
	var ln net.Listener
	var err error
	if network == "unix" {
		dir, err := os.MkdirTemp("", "mlt")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(dir) })
		ln, err = net.Listen("unix", filepath.Join(dir, "m.sock"))
		require.NoError(t, err)
		f.addr = "unix:" + ln.Addr().String()
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		f.addr = "inet:" + ln.Addr().String()
	}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return &fakeConn{f: f} }),
		gomilter.WithActions(allActions),
		gomilter.WithProtocol(f.protocol),
	)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fake) event(e string) {
	f.mu.Lock()
	f.events = append(f.events, e)
	f.mu.Unlock()
}

// Events returns what the milter was sent so far.
func (f *fake) Events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

func (f *fake) Macro(stage, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.macros[stage][name]
}

func (f *fake) Messages() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.messages...)
}

func (f *fake) Conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// fakeConn is the fake's milter for one connection.
type fakeConn struct {
	f   *fake
	msg bytes.Buffer
}

func (c *fakeConn) record(stage string, m gomilter.Modifier) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	mm := c.f.macros[stage]
	if mm == nil {
		mm = map[string]string{}
		c.f.macros[stage] = mm
	}
	for _, n := range macroNames {
		if v, ok := m.GetEx(n); ok {
			mm[n] = v
		}
	}
}

func (c *fakeConn) NewConnection(gomilter.Modifier) error {
	c.f.mu.Lock()
	c.f.conns++
	c.f.mu.Unlock()
	return nil
}

func (c *fakeConn) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event("connect " + host + " " + family + " " + addr)
	c.record("connect", m)
	if c.f.connect == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.connect(host, family, port, addr)
}

func (c *fakeConn) Helo(name string, m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event("helo " + name)
	c.record("helo", m)
	if c.f.helo == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.helo(name)
}

func (c *fakeConn) MailFrom(from, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event(strings.TrimSpace("mail <" + from + "> " + args))
	c.record("mail", m)
	c.msg.Reset()
	if c.f.mail == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.mail(from, args)
}

func (c *fakeConn) RcptTo(to, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event(strings.TrimSpace("rcpt <" + to + "> " + args))
	c.record("rcpt", m)
	if c.f.rcpt == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.rcpt(to, args)
}

func (c *fakeConn) Data(m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event("data")
	c.record("data", m)
	return gomilter.RespContinue, nil
}

func (c *fakeConn) Header(name, value string, m gomilter.Modifier) (*gomilter.Response, error) {
	c.msg.WriteString(name + ":" + value + "\n")
	if c.f.header == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.header(name, value)
}

func (c *fakeConn) Headers(m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event("eoh")
	c.msg.WriteString("\n")
	return gomilter.RespContinue, nil
}

func (c *fakeConn) BodyChunk(chunk []byte, m gomilter.Modifier) (*gomilter.Response, error) {
	c.msg.Write(chunk)
	if c.f.body == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.body(chunk)
}

func (c *fakeConn) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	c.f.event("eom")
	c.record("eom", m)
	c.f.mu.Lock()
	c.f.messages = append(c.f.messages, c.msg.String())
	c.f.mu.Unlock()
	if c.f.eom == nil {
		return gomilter.RespContinue, nil
	}
	return c.f.eom(m, c)
}

func (c *fakeConn) Abort(gomilter.Modifier) error {
	c.f.event("abort")
	return nil
}

func (c *fakeConn) Unknown(string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (c *fakeConn) Cleanup(gomilter.Modifier) {
	c.f.event("close")
	c.f.closed <- struct{}{}
}

// queued is a message the server queued.
type queued struct {
	from       string
	rcpts      []string
	quarantine string
	discarded  string
	forced     bool
	raw        string
}

// memQueue keeps what the server queues.
type memQueue struct {
	mu   sync.Mutex
	msgs []queued
}

func (q *memQueue) Enqueue(_ context.Context, tx *policy.Transaction, m *policy.Message) error {
	var b bytes.Buffer
	if _, err := m.WriteTo(&b); err != nil {
		return err
	}
	e := queued{from: tx.From.String(), quarantine: tx.Quarantine(), forced: tx.ForceAccepted(), raw: b.String()}
	e.discarded, _ = DiscardedKey.Get(tx)
	for _, r := range tx.Rcpts {
		e.rcpts = append(e.rcpts, r.Addr.String())
	}
	q.mu.Lock()
	q.msgs = append(q.msgs, e)
	q.mu.Unlock()
	return nil
}

func (q *memQueue) all() []queued {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]queued(nil), q.msgs...)
}

// harness is a real smtp.Server on loopback whose chain holds the
// milters, then an rcpt rule accepting everything and a preq rule
// recording what it sees after them.
type harness struct {
	t     testing.TB
	addr  string
	queue *memQueue

	mu    sync.Mutex
	after []string // the Subject the rule after the milters saw
}

func startServer(t testing.TB, ms ...*Milter) *harness {
	t.Helper()
	h := &harness{t: t, queue: &memQueue{}}
	chain := &policy.Chain{Logger: testLogger(t)}
	Register(chain, ms...)
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	chain.PreQ("after", policy.MessageAction(func(_ context.Context, _ *policy.Transaction, m *policy.Message) {
		h.mu.Lock()
		h.after = append(h.after, m.Header.Get("Subject")+"|"+m.Header.Get("X-Milter"))
		h.mu.Unlock()
	}))
	h.addr = serve(t, chain, h.queue)
	t.Cleanup(func() {
		for _, m := range ms {
			m.Close()
		}
	})
	return h
}

// serve runs an smtp.Server with chain and q on loopback until the test
// ends, and returns its address.
func serve(t testing.TB, chain *policy.Chain, q smtp.Queue) string {
	return serveWith(t, chain, q, nil)
}

// serveWith is serve with the server's configuration edited first.
func serveWith(t testing.TB, chain *policy.Chain, q smtp.Queue, edit func(*smtp.Config)) string {
	t.Helper()
	cfg := smtp.Config{
		Hostname: "mx.test.example",
		Chain:    chain,
		Queue:    q,
		SpoolDir: t.TempDir(),
		Logger:   testLogger(t),
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := smtp.NewServer(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(context.Background(), ln, smtp.Listener{Name: "mta", Role: smtp.RoleMTA})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

func (h *harness) After() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.after...)
}

// newMilter makes a Milter of the fake with short timeouts.
func newMilter(t testing.TB, f *fake, edit func(*Options)) *Milter {
	t.Helper()
	o := Options{
		Addr: f.addr, Name: "fake",
		ConnectTimeout: 5 * time.Second, CommandTimeout: 5 * time.Second, EOMTimeout: 5 * time.Second,
		IdleTimeout: 5 * time.Second, Hostname: "mx.test.example", TempDir: t.TempDir(),
		Logger: testLogger(t),
	}
	if edit != nil {
		edit(&o)
	}
	m, err := New(o)
	require.NoError(t, err)
	return m
}

// result is what one SMTP transaction got.
type result struct {
	mail  error
	rcpts []error
	data  error
}

func code(err error) int {
	if err == nil {
		return 250
	}
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

const testMessage = "From: <alice@sender.example>\r\nTo: <bob@rcpt.example>\r\nSubject: hello\r\n\r\nHi Bob.\r\n"

// send runs sessions of one transaction each on a new connection.
func (h *harness) send(from string, rcpts []string, msg string) result {
	h.t.Helper()
	c, err := gosmtp.Dial(h.addr)
	require.NoError(h.t, err)
	defer c.Close()
	res := h.tx(c, from, rcpts, msg)
	c.Quit()
	return res
}

func (h *harness) tx(c *gosmtp.Client, from string, rcpts []string, msg string) result {
	h.t.Helper()
	var res result
	require.NoError(h.t, c.Hello("client.test.example"))
	if res.mail = c.Mail(from, nil); res.mail != nil {
		return res
	}
	ok := 0
	for _, r := range rcpts {
		err := c.Rcpt(r, nil)
		res.rcpts = append(res.rcpts, err)
		if err == nil {
			ok++
		}
	}
	if ok == 0 {
		c.Reset()
		return res
	}
	w, err := c.Data()
	if err != nil {
		res.data = err
		return res
	}
	_, err = io.Copy(w, strings.NewReader(msg))
	require.NoError(h.t, err)
	res.data = w.Close()
	return res
}

// waitClosed waits for n milter connections to close.
func (f *fake) waitClosed(t testing.TB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-f.closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("milter connection %d of %d not closed", i+1, n)
		}
	}
}
