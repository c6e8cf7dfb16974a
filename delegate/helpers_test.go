package delegate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// testLogger sends the package's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// startService starts a Service's receiver on a loopback port and returns
// it running; it is closed at the end of the test.
func startService(t testing.TB, ln net.Listener, filter string, timeout time.Duration, edit func(*Service)) *Service {
	t.Helper()
	svc := &Service{
		Name:     "test",
		Filter:   filter,
		Receiver: ln.Addr().String(),
		Timeout:  timeout,
		Hostname: "mx.test.example",
		TempDir:  t.TempDir(),
		Logger:   testLogger(t),
	}
	if edit != nil {
		edit(svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	waitServing(t, svc)
	return svc
}

func waitServing(t testing.TB, svc *Service) {
	t.Helper()
	require.Eventually(t, func() bool {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		return svc.srv != nil
	}, 5*time.Second, 5*time.Millisecond, "receiver did not start")
}

// setup starts a receiver and a fake filter relaying to it.
func setup(t testing.TB, mode filterMode, timeout time.Duration, editF func(*fakeFilter), editS func(*Service)) (*Service, *fakeFilter) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := startFilter(t, mode, ln.Addr().String(), editF)
	return startService(t, ln, f.addr, timeout, editS), f
}

// newMessage stores raw in a file and returns the Message over it.
func newMessage(t testing.TB, raw string) *policy.Message {
	t.Helper()
	path := filepath.Join(t.TempDir(), "msg.eml")
	require.NoError(t, os.WriteFile(path, []byte(raw), 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	m, err := policy.NewMessage(f, int64(len(raw)), f)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func newTx(id, from string, rcpts ...string) *policy.Transaction {
	tx := policy.NewTransaction(&policy.Conn{ID: "conn-" + id}, id)
	tx.From = policy.MustParseAddress(from)
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return tx
}

func readAll(t testing.TB, m *policy.Message) string {
	t.Helper()
	b, err := io.ReadAll(m.Reader())
	require.NoError(t, err)
	return string(b)
}

func rawMessage(subject, body string) string {
	return "From: <a@sender.example>\r\nTo: <b@rcpt.example>\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n"
}

// filterMode is how the fake filter treats a message.
type filterMode int

const (
	modeRelay      filterMode = iota // scan (EICAR test) and relay back, like clamsmtpd Action: pass
	modeRejectRcpt                   // 550 at RCPT
	modeRejectData                   // 550 after DATA, like clamsmtpd Action: bounce
	modeDrop                         // 250 after DATA, nothing relayed (clamsmtpd Action: drop)
	modeNoToken                      // relay without the token field
	modeWrongToken                   // relay with a token nobody waits for
)

// fakeFilter is a content filter on loopback: a go-smtp server that
// relays what it receives to the receiver, adding clamsmtpd's header fields.
type fakeFilter struct {
	t     testing.TB
	mode  filterMode
	delay time.Duration // before relaying
	async bool          // answer 250 at once and relay later, in shuffled batches
	batch int           // async: relay once this many are queued
	next  string        // where to relay (the receiver)
	addr  string

	mu      sync.Mutex
	inData  int     // sessions inside Data now
	maxData int     // most sessions inside Data at once
	relayed []error // the receiver's reply to each relay (nil: 250)
	queue   []job
	wg      sync.WaitGroup
}

type job struct {
	from  string
	rcpts []string
	data  []byte
}

func startFilter(t testing.TB, mode filterMode, next string, edit func(*fakeFilter)) *fakeFilter {
	t.Helper()
	f := &fakeFilter{t: t, mode: mode, batch: 1, next: next}
	if edit != nil {
		edit(f)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f.addr = ln.Addr().String()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &filterSession{f: f}, nil }))
	srv.Domain = "filter.test"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	srv.ErrorLog = slogPrintf{testLogger(t)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); f.wg.Wait() })
	return f
}

// replies returns the receiver's replies to the relays so far.
func (f *fakeFilter) replies() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.relayed...)
}

type filterSession struct {
	f     *fakeFilter
	from  string
	rcpts []string
}

func (s *filterSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *filterSession) Logout() error { return nil }

// requote undoes go-smtp's unquoting of local parts, as a relay must.
func requote(a string) string {
	i := strings.LastIndexByte(a, '@')
	if i < 0 {
		return a
	}
	return policy.Address{Local: a[:i], Domain: a[i+1:]}.String()
}

func (s *filterSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = requote(from)
	return nil
}

func (s *filterSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.f.mode == modeRejectRcpt {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	s.rcpts = append(s.rcpts, requote(to))
	return nil
}

func (s *filterSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	j := job{from: s.from, rcpts: s.rcpts, data: data}
	switch s.f.mode {
	case modeRejectData:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Virus Detected; Content Rejected"}
	case modeDrop:
		return nil
	}
	if s.f.async {
		s.f.mu.Lock()
		s.f.queue = append(s.f.queue, j)
		if len(s.f.queue) >= s.f.batch {
			q := s.f.queue
			s.f.queue = nil
			rand.Shuffle(len(q), func(i, k int) { q[i], q[k] = q[k], q[i] })
			s.f.wg.Add(1)
			go func() {
				defer s.f.wg.Done()
				for _, j := range q {
					s.f.relay(j)
				}
			}()
		}
		s.f.mu.Unlock()
		return nil
	}
	s.f.mu.Lock()
	s.f.inData++
	s.f.maxData = max(s.f.maxData, s.f.inData)
	s.f.mu.Unlock()
	defer func() { s.f.mu.Lock(); s.f.inData--; s.f.mu.Unlock() }()
	if s.f.delay > 0 {
		time.Sleep(s.f.delay)
	}
	return s.f.relay(j)
}

// scanned returns data as clamsmtpd passes it on: one field added as the
// last header line.
func (f *fakeFilter) scanned(data []byte) []byte {
	field := "X-Virus-Scanned: ClamAV using ClamSMTP\r\n"
	if bytes.Contains(data, []byte("EICAR")) {
		field = "X-Virus-Infected: Virus Detected!\r\n"
	}
	i := bytes.Index(data, []byte("\r\n\r\n"))
	require.GreaterOrEqual(f.t, i, 0, "test message without header end")
	out := append([]byte(nil), data[:i+2]...)
	out = append(out, field...)
	out = append(out, data[i+2:]...)
	switch f.mode {
	case modeNoToken, modeWrongToken:
		end := bytes.Index(out, []byte("\r\n"))
		require.True(f.t, bytes.HasPrefix(out, []byte(TokenHeader+": ")), "token not on the first line")
		if f.mode == modeNoToken {
			out = out[end+2:]
		} else {
			out = append([]byte(TokenHeader+": "+newToken()), out[end:]...)
		}
	}
	return out
}

// relay sends j to the receiver and returns the receiver's reply.
func (f *fakeFilter) relay(j job) error {
	err := sendPlain(f.next, j.from, j.rcpts, f.scanned(j.data))
	f.mu.Lock()
	f.relayed = append(f.relayed, err)
	f.mu.Unlock()
	var se *smtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local Error"}
	}
	return err
}

// sendPlain is one SMTP transaction without TLS, stopping at the first
// error as a relaying filter does.
func sendPlain(addr, from string, rcpts []string, data []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	if err := c.Hello("filter.test"); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	wc, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := wc.Write(data); err != nil {
		return err
	}
	if err := wc.Close(); err != nil {
		return err
	}
	return c.Quit()
}
