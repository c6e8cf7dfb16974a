package delegate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// virusRule is the then-rule of the package's documentation.
func virusRule(seen *[]string) policy.MessageRule {
	return func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
		if seen != nil {
			*seen = append(*seen, m.Header.Get("X-Virus-Scanned")+"|"+m.Header.Get("X-Virus-Infected"))
		}
		if m.Header.Has("X-Virus-Infected") {
			return policy.Quarantine("virus_q")
		}
		return policy.Next()
	}
}

func assertUnavailable(t *testing.T, v policy.Verdict) {
	t.Helper()
	assert.Equal(t, policy.KindDeny, v.Kind, "verdict %v", v)
	assert.Equal(t, 451, v.Reply.Code)
	assert.True(t, strings.HasPrefix(v.Reply.Enhanced, "4.7."), "enhanced code %q", v.Reply.Enhanced)
	assert.Error(t, v.Err)
}

func tempFiles(t *testing.T, svc *Service) []string {
	t.Helper()
	ents, err := os.ReadDir(svc.TempDir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestRuleCleanAndInfected(t *testing.T) {
	svc, f := setup(t, modeRelay, 5*time.Second, nil, nil)
	tests := []struct {
		name      string
		body      string
		wantKind  policy.Kind
		wantField string
	}{
		{"clean", "Hello,\r\n..a line starting with a dot\r\n\xc3\xa9t\xc3\xa9 8-bit", policy.KindNext, "X-Virus-Scanned: ClamAV using ClamSMTP\r\n"},
		{"infected", "attachment:\r\n" + eicar, policy.KindQuarantine, "X-Virus-Infected: Virus Detected!\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := rawMessage(tc.name, tc.body)
			m := newMessage(t, raw)
			var seen []string
			v := Rule(svc, virusRule(&seen))(context.Background(), newTx(tc.name, "a@sender.example", "b@rcpt.example"), m)
			assert.Equal(t, tc.wantKind, v.Kind, "verdict %v", v)
			if tc.wantKind == policy.KindQuarantine {
				assert.Equal(t, "virus_q", v.Queue)
			}
			require.Len(t, seen, 1, "then-rule runs once")
			// The message is the returned one: the original bytes plus the
			// filter's field at the end of the header, without our token.
			i := strings.Index(raw, "\r\n\r\n")
			want := raw[:i+2] + tc.wantField + raw[i+2:]
			assert.Equal(t, want, readAll(t, m))
			assert.False(t, m.Header.Has(TokenHeader))
			assert.Len(t, tempFiles(t, svc), 1, "the returned message is stored in TempDir")
			require.NoError(t, m.Close())
			assert.Empty(t, tempFiles(t, svc), "closing the message removes the returned copy")
		})
	}
	for _, err := range f.replies() {
		assert.NoError(t, err, "the receiver accepted every returned message")
	}
}

func TestRuleNilThenAndEnvelope(t *testing.T) {
	svc, f := setup(t, modeRelay, 5*time.Second, nil, nil)
	// Null sender, several recipients, a quoted local part.
	tx := newTx("env", "", "b@rcpt.example", `"john smith"@rcpt.example`, "c@other.example")
	m := newMessage(t, rawMessage("bounce", "body"))
	v := Rule(svc, nil)(context.Background(), tx, m)
	assert.Equal(t, policy.KindNext, v.Kind, "verdict %v", v)
	assert.Equal(t, "ClamAV using ClamSMTP", m.Header.Get("X-Virus-Scanned"))
	require.Len(t, f.replies(), 1)
	assert.NoError(t, f.replies()[0])
}

// TestRuleFailures: whatever goes wrong, the transaction is deferred with
// 451 4.7.x (never accepted unscanned), and nothing is left behind.
func TestRuleFailures(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	downAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		mode    filterMode
		editF   func(*fakeFilter)
		editS   func(*Service)
		timeout time.Duration
		// what the receiver answered the filter's relays (nil: no relay)
		wantRelay []string
	}{
		{name: "down", editS: func(s *Service) { s.Filter = downAddr }},
		{name: "reject at RCPT", mode: modeRejectRcpt},
		{name: "reject after DATA (clamsmtpd Action bounce)", mode: modeRejectData},
		{name: "250 but nothing back (clamsmtpd Action drop)", mode: modeDrop, timeout: 300 * time.Millisecond},
		{name: "slow past the timeout", timeout: 300 * time.Millisecond,
			editF: func(f *fakeFilter) { f.delay = 900 * time.Millisecond }, wantRelay: []string{"550 5.7.1"}},
		{name: "garbage: no token", mode: modeNoToken, wantRelay: []string{"550 5.7.1"}},
		{name: "garbage: unknown token", mode: modeWrongToken, wantRelay: []string{"550 5.7.1"}},
		{name: "garbage: no token, async filter", mode: modeNoToken, timeout: 500 * time.Millisecond,
			editF: func(f *fakeFilter) { f.async = true }, wantRelay: []string{"550 5.7.1"}},
		{name: "peer not allowed", editS: func(s *Service) {
			s.AllowedPeers = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		}, wantRelay: []string{"554 5.7.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			svc, f := setup(t, tc.mode, timeout, tc.editF, tc.editS)
			raw := rawMessage("x", "body")
			m := newMessage(t, raw)
			thenRan := false
			start := time.Now()
			v := Rule(svc, func(context.Context, *policy.Transaction, *policy.Message) policy.Verdict {
				thenRan = true
				return policy.Accept()
			})(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), m)
			t.Logf("verdict %v after %s: %v", v, time.Since(start), v.Err)
			assertUnavailable(t, v)
			assert.False(t, thenRan, "the then-rule must not run on a failed delegation")
			assert.Equal(t, raw, readAll(t, m), "the message is unchanged")

			if tc.wantRelay != nil {
				require.Eventually(t, func() bool { return len(f.replies()) == len(tc.wantRelay) }, 5*time.Second, 10*time.Millisecond)
				for i, want := range tc.wantRelay {
					err := f.replies()[i]
					require.Error(t, err)
					assert.Contains(t, err.Error(), want[:3])
					var se *smtp.SMTPError
					if assert.True(t, errors.As(err, &se), "%v", err) {
						assert.Equal(t, want, fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]))
					}
				}
			} else {
				assert.Empty(t, f.replies())
			}
			assert.Empty(t, tempFiles(t, svc), "nothing left in TempDir")
			svc.mu.Lock()
			assert.Empty(t, svc.waiters, "no waiter left registered")
			svc.mu.Unlock()
		})
	}
}

func TestRuleFailOpen(t *testing.T) {
	svc, _ := setup(t, modeRejectData, 5*time.Second, nil, func(s *Service) { s.FailOpen = true })
	raw := rawMessage("x", "body")
	m := newMessage(t, raw)
	v := Rule(svc, virusRule(nil))(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), m)
	assert.Equal(t, policy.KindNext, v.Kind)
	assert.Equal(t, raw, readAll(t, m))
}

func TestRuleNotServingAndClose(t *testing.T) {
	svc := &Service{Name: "idle", Filter: "127.0.0.1:1", Logger: testLogger(t)}
	m := newMessage(t, rawMessage("x", "body"))
	err := svc.Delegate(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), m)
	assert.ErrorIs(t, err, ErrNotServing)

	// A delegation waiting when the receiver closes fails at once.
	svc2, _ := setup(t, modeDrop, time.Minute, nil, nil)
	errc := make(chan error, 1)
	go func() {
		errc <- svc2.Delegate(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), newMessage(t, rawMessage("x", "body")))
	}()
	require.Eventually(t, func() bool { svc2.mu.Lock(); defer svc2.mu.Unlock(); return len(svc2.waiters) == 1 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // let the send finish (the drop filter says 250)
	require.NoError(t, svc2.Close())
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Delegate still waiting after Close")
	}
}

// TestRuleConcurrent: 20 transactions delegate at once; the filter answers
// 250 at once and returns the messages later, all together, in shuffled
// order; each transaction gets its own message back.
func TestRuleConcurrent(t *testing.T) {
	const n = 20
	svc, f := setup(t, modeRelay, 20*time.Second, func(f *fakeFilter) { f.async, f.batch = true, n }, nil)
	var wg sync.WaitGroup
	verdicts := make([]policy.Verdict, n)
	bodies := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("message number %d", i)
			if i%4 == 0 {
				body += "\r\n" + eicar
			}
			tx := newTx(fmt.Sprint(i), fmt.Sprintf("s%d@sender.example", i%3), fmt.Sprintf("r%d@rcpt.example", i))
			m := newMessage(t, rawMessage(fmt.Sprintf("subject %d", i), body))
			verdicts[i] = Rule(svc, virusRule(nil))(context.Background(), tx, m)
			bodies[i] = readAll(t, m)
		}()
	}
	wg.Wait()
	// The filter records the receiver's reply after the transaction has
	// already taken its message.
	require.Eventually(t, func() bool { return len(f.replies()) == n }, 10*time.Second, 10*time.Millisecond)
	for i := range n {
		if i%4 == 0 {
			assert.Equal(t, policy.Quarantine("virus_q"), verdicts[i], "message %d", i)
		} else {
			assert.Equal(t, policy.KindNext, verdicts[i].Kind, "message %d: %v %v", i, verdicts[i], verdicts[i].Err)
		}
		assert.Contains(t, bodies[i], fmt.Sprintf("Subject: subject %d\r\n", i))
		assert.Contains(t, bodies[i], fmt.Sprintf("message number %d", i))
		assert.NotContains(t, bodies[i], TokenHeader)
	}
	for _, err := range f.replies() {
		assert.NoError(t, err)
	}
}

// smtpDialog runs a raw SMTP conversation with the receiver and returns
// each reply's first line.
func smtpDialog(t *testing.T, addr string, lines ...string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(c)
	read := func() string {
		code, msg, err := tp.ReadResponse(0)
		if err != nil && code == 0 {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("%d %s", code, strings.SplitN(msg, "\n", 2)[0])
	}
	replies := []string{read()}
	for _, l := range lines {
		if err := tp.PrintfLine("%s", l); err != nil {
			break
		}
		if l == "DATA" || !strings.HasPrefix(l, "DATA") && isCommand(l) {
			replies = append(replies, read())
		}
	}
	return replies
}

func isCommand(l string) bool {
	for _, c := range []string{"EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT", "RSET", "."} {
		if l == c || strings.HasPrefix(l, c+" ") {
			return true
		}
	}
	return false
}

// TestReceiverRefusesStrangers: with no delegation waiting the receiver
// takes nothing, whatever the filter (or anyone on loopback) sends.
func TestReceiverRefusesStrangers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	svc := startService(t, ln, "127.0.0.1:1", time.Second, nil)
	got := smtpDialog(t, svc.Receiver, "EHLO filter", "MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA", "QUIT")
	require.Len(t, got, 6, "%q", got)
	assert.True(t, strings.HasPrefix(got[0], "220 "), got[0])
	assert.True(t, strings.HasPrefix(got[1], "250 "), got[1])
	assert.True(t, strings.HasPrefix(got[2], "550 5.7.1"), got[2])
	assert.True(t, strings.HasPrefix(got[3], "503 ") || strings.HasPrefix(got[3], "502 "), got[3])
	assert.True(t, strings.HasPrefix(got[4], "502 ") || strings.HasPrefix(got[4], "503 "), got[4])

	// With a delegation waiting, a message whose envelope or token does
	// not match is still refused, and the delegation still waits.
	w := &waiter{token: newToken(), from: policy.MustParseAddress("a@sender.example"),
		rcpts: []policy.Address{policy.MustParseAddress("b@rcpt.example")}, limit: 1 << 20, ch: make(chan result, 1)}
	require.NoError(t, svc.register(w))
	defer svc.unregister(w)
	tests := []struct {
		name  string
		lines []string
		want  []string // reply prefixes after the greeting and EHLO
	}{
		{"other recipient", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<x@rcpt.example>"}, []string{"250", "550 5.7.1"}},
		{"other sender", []string{"MAIL FROM:<z@sender.example>"}, []string{"550 5.7.1"}},
		{"bad address", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<@@>"}, []string{"250", "501"}},
		{"no token", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA", "Subject: x", "", "body", "."}, []string{"250", "250", "354", "550 5.7.1"}},
		{"unknown token", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA", TokenHeader + ": " + newToken(), "", "body", "."}, []string{"250", "250", "354", "550 5.7.1"}},
		{"malformed token", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA", TokenHeader + ": " + w.token + "x", "", "body", "."}, []string{"250", "250", "354", "550 5.7.1"}},
		{"no token, long header", []string{"MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA", "X-Long: " + strings.Repeat("y", 900), "Subject: x", "", strings.Repeat("z", 990), "."}, []string{"250", "250", "354", "550 5.7.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := smtpDialog(t, svc.Receiver, append([]string{"EHLO filter"}, tc.lines...)...)
			require.Len(t, got, 2+len(tc.want), "%q", got)
			for i, want := range tc.want {
				assert.True(t, strings.HasPrefix(got[2+i], want), "reply %d: %q, want %s", i, got[2+i], want)
			}
			assert.NotNil(t, svc.lookup(w.token), "the delegation still waits")
		})
	}

	// The right token with the right envelope is taken: 250, and the
	// waiter has the message without the token field.
	got = smtpDialog(t, svc.Receiver, "EHLO filter", "MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA",
		"Received: by filter", TokenHeader+": "+w.token, "Subject: ok", "", "body", ".", "QUIT")
	require.Len(t, got, 7, "%q", got)
	assert.True(t, strings.HasPrefix(got[5], "250 "), got[5])
	select {
	case r := <-w.ch:
		require.NoError(t, r.err)
		defer r.file.Close()
		b := make([]byte, r.size)
		_, err := r.file.ReadAt(b, 0)
		require.NoError(t, err)
		assert.Equal(t, "Received: by filter\r\nSubject: ok\r\n\r\nbody\r\n", string(b))
	default:
		t.Fatal("the waiter got nothing")
	}
	assert.Nil(t, svc.lookup(w.token), "a delegation is answered once")
}

// TestReceiverTooLarge: a returned message that grew past MaxGrowth is
// refused and fails its delegation at once.
func TestReceiverTooLarge(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	svc := startService(t, ln, "127.0.0.1:1", time.Second, nil)
	w := &waiter{token: newToken(), from: policy.MustParseAddress("a@sender.example"),
		rcpts: []policy.Address{policy.MustParseAddress("b@rcpt.example")}, limit: 100, ch: make(chan result, 1)}
	require.NoError(t, svc.register(w))
	defer svc.unregister(w)
	got := smtpDialog(t, svc.Receiver, "EHLO filter", "MAIL FROM:<a@sender.example>", "RCPT TO:<b@rcpt.example>", "DATA",
		TokenHeader+": "+w.token, "", strings.Repeat("z", 200), ".")
	require.Len(t, got, 6, "%q", got)
	assert.True(t, strings.HasPrefix(got[5], "552 5.3.4"), got[5])
	select {
	case r := <-w.ch:
		assert.ErrorIs(t, r.err, ErrTooLarge)
	default:
		t.Fatal("the waiter was not told")
	}
	assert.Empty(t, tempFiles(t, svc))
}

// TestReceiverPeerRefused: a connection from outside AllowedPeers gets a
// 554 greeting and is closed.
func TestReceiverPeerRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	svc := startService(t, ln, "127.0.0.1:1", time.Second, func(s *Service) {
		s.AllowedPeers = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	})
	c, err := net.DialTimeout("tcp", svc.Receiver, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "554 5.7.1 "), line)

	tests := []struct {
		peer string
		want bool
	}{
		{"127.0.0.1:25", false}, {"10.1.2.3:25", true}, {"[::1]:25", true},
		{"[::ffff:10.0.0.1]:25", true}, {"192.0.2.1:25", false}, {"garbage", false},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, svc.allowed(addrString(tc.peer)), tc.peer)
	}
	def := &Service{}
	assert.True(t, def.allowed(addrString("127.0.0.2:1")))
	assert.True(t, def.allowed(addrString("[::1]:1")))
	assert.False(t, def.allowed(addrString("192.168.1.1:1")))
}

type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }

// TestRuleMaxConcurrent: no more than MaxConcurrent delegations reach the
// filter at once; the others wait their turn and succeed.
func TestRuleMaxConcurrent(t *testing.T) {
	const n, limit = 10, 3
	svc, f := setup(t, modeRelay, 20*time.Second, func(f *fakeFilter) { f.delay = 30 * time.Millisecond },
		func(s *Service) { s.MaxConcurrent = limit })
	var wg sync.WaitGroup
	verdicts := make([]policy.Verdict, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := newMessage(t, rawMessage("x", fmt.Sprint(i)))
			verdicts[i] = Rule(svc, nil)(context.Background(), newTx(fmt.Sprint(i), "a@sender.example", "b@rcpt.example"), m)
		}()
	}
	wg.Wait()
	for i, v := range verdicts {
		assert.Equal(t, policy.KindNext, v.Kind, "message %d: %v %v", i, v, v.Err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	assert.LessOrEqual(t, f.maxData, limit)
	assert.GreaterOrEqual(t, f.maxData, 1)
}
