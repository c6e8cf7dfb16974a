package smtp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

func checkBody(chunks ...string) (bodyError, bool, int64) {
	var b bodyChecker
	for _, c := range chunks {
		if _, err := b.Write([]byte(c)); err != nil {
			break
		}
	}
	b.Close()
	return b.Err(), b.EightBit(), b.Size()
}

func TestBodyChecker(t *testing.T) {
	cases := []struct {
		name   string
		chunks []string
		want   bodyError
		eight  bool
	}{
		{"empty", nil, bodyOK, false},
		{"crlf", []string{"a\r\nb\r\n"}, bodyOK, false},
		{"crlf split across writes", []string{"a\r", "\nb\r\n"}, bodyOK, false},
		{"bare lf", []string{"a\nb\r\n"}, bodyBareLF, false},
		{"bare lf at start", []string{"\n"}, bodyBareLF, false},
		{"bare cr", []string{"a\rb\r\n"}, bodyBareCR, false},
		{"bare cr at end", []string{"a\r\nb\r"}, bodyBareCR, false},
		{"bare cr split", []string{"a\r", "b"}, bodyBareCR, false},
		{"cr cr lf", []string{"a\r\r\n"}, bodyBareCR, false},
		{"nul", []string{"a\x00\r\n"}, bodyNUL, false},
		{"8bit", []string{"caf\xc3\xa9\r\n"}, bodyOK, true},
		{"tab and ff", []string{"a\tb\x0c\r\n"}, bodyOK, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, eight, _ := checkBody(tc.chunks...)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.eight, eight)
		})
	}
	var b bodyChecker
	n, err := b.Write([]byte("ok\r\nbad\nrest"))
	assert.ErrorIs(t, err, errBody)
	assert.Equal(t, 7, n, "stops at the violation")
	assert.Equal(t, int64(7), b.Size())
}

// naiveBodyCheck is the reference the fuzz test compares against: the
// first violation, the bytes found good before it (up to the byte after
// a bare CR) and whether those hold a byte above 127.
func naiveBodyCheck(s string) (bodyError, int64, bool) {
	eight := func(n int) bool { return strings.IndexFunc(s[:n], func(r rune) bool { return r >= 0x80 }) >= 0 }
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\n':
			if i == 0 || s[i-1] != '\r' {
				return bodyBareLF, int64(i), eight(i)
			}
		case '\r':
			if i+1 == len(s) {
				return bodyBareCR, int64(i + 1), eight(i + 1)
			}
			if s[i+1] != '\n' {
				return bodyBareCR, int64(i + 1), eight(i + 1)
			}
		case 0:
			return bodyNUL, int64(i), eight(i)
		}
	}
	return bodyOK, int64(len(s)), eight(len(s))
}

func FuzzBodyChecker(f *testing.F) {
	for _, s := range []string{"", "a\r\n", "a\n", "\r", "\r\r\n", "x\x00", "\r\n.\r\n", "\n.\n", "caf\xc3\xa9\r\n",
		strings.Repeat("line of text\r\n", 20) + "\xe9\r\n", strings.Repeat("a\r\n", 30) + "b\rc", strings.Repeat("x", 70) + "\xff\n"} {
		f.Add(s, 1)
		f.Add(s, 7)
		f.Add(s, 64)
	}
	f.Fuzz(func(t *testing.T, s string, split int) {
		var b bodyChecker
		// Feed in chunks of the given size to exercise state across writes.
		if split <= 0 || split > len(s) {
			split = len(s) + 1
		}
		for i := 0; i < len(s); i += split {
			if _, err := b.Write([]byte(s[i:min(i+split, len(s))])); err != nil {
				break
			}
		}
		b.Close()
		want, size, eight := naiveBodyCheck(s)
		if got := b.Err(); got != want {
			t.Fatalf("bodyChecker(%q) = %v, want %v", s, got, want)
		}
		if b.Size() != size || b.EightBit() != eight {
			t.Fatalf("bodyChecker(%q): size %d, 8-bit %v; want %d, %v", s, b.Size(), b.EightBit(), size, eight)
		}
	})
}

// splitEnhanced is the reference FuzzParseEnhanced compares against:
// parseEnhanced as first written, with strings.Split.
func splitEnhanced(s string, code int) gosmtp.EnhancedCode {
	def := gosmtp.EnhancedCode{code / 100, 0, 0}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return def
	}
	var ec gosmtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || len(p) > 3 {
			return def
		}
		ec[i] = n
	}
	if ec[0] != code/100 {
		return def
	}
	return ec
}

func FuzzParseEnhanced(f *testing.F) {
	for _, s := range []string{"", "2.0.0", "5.7.1", "4.7.1.2", "5..1", "5.7.", ".7.1", "5.7.1000", "+5.-0.1", "5.7", "x.y.z"} {
		f.Add(s, 250)
		f.Add(s, 550)
	}
	f.Fuzz(func(t *testing.T, s string, code int) {
		if got, want := parseEnhanced(s, code), splitEnhanced(s, code); got != want {
			t.Fatalf("parseEnhanced(%q, %d) = %v, want %v", s, code, got, want)
		}
	})
}

func TestSanitizeHelo(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "unknown",
		"mail.example.com":      "mail.example.com",
		"[192.0.2.1]":           "[192.0.2.1]",
		"[IPv6:2001:db8::1]":    "[IPv6:2001:db8::1]",
		"evil\r\nX-Injected: 1": "evil??X-Injected:?1",
		"a;b (c)":               "a?b??c?",
		"caf\xc3\xa9":           "caf??",
	} {
		assert.Equal(t, want, SanitizeHelo(in), "%q", in)
	}
	assert.Len(t, SanitizeHelo(strings.Repeat("a", 1000)), 255)
}

func FuzzSanitizeHelo(f *testing.F) {
	for _, s := range []string{"", "mx.example", "[1.2.3.4]", "a\r\nb", "(x);"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := SanitizeHelo(s)
		if out == "" || len(out) > 255 {
			t.Fatalf("bad length %d", len(out))
		}
		for i := 0; i < len(out); i++ {
			c := out[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._:[]?", c) >= 0
			if !ok {
				t.Fatalf("SanitizeHelo(%q) kept %q", s, c)
			}
		}
		if SanitizeHelo(out) != out {
			t.Fatalf("not idempotent: %q", s)
		}
	})
}

func TestParsePlain(t *testing.T) {
	cases := []struct {
		in             string
		id, user, pass string
		ok             bool
	}{
		{"\x00alice\x00secret", "", "alice", "secret", true},
		{"admin\x00alice\x00secret", "admin", "alice", "secret", true},
		{"alice\x00secret", "", "", "", false},
		{"\x00\x00secret", "", "", "", false},
		{"\x00alice\x00", "", "", "", false},
		{"\x00a\x00b\x00c", "", "", "", false},
		{"\x00" + strings.Repeat("u", 256) + "\x00p", "", "", "", false},
	}
	for _, tc := range cases {
		id, user, pass, ok := parsePlain([]byte(tc.in))
		assert.Equal(t, tc.ok, ok, "%q", tc.in)
		if tc.ok {
			assert.Equal(t, []string{tc.id, tc.user, tc.pass}, []string{id, user, pass})
		}
	}
}

func FuzzParsePlain(f *testing.F) {
	f.Add([]byte("\x00alice\x00secret"))
	f.Add([]byte("a\x00b\x00c\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, user, pass, ok := parsePlain(b)
		if !ok {
			return
		}
		if user == "" || pass == "" || id+"\x00"+user+"\x00"+pass != string(b) {
			t.Fatalf("inconsistent parse of %q", b)
		}
	})
}

func FuzzLogin(f *testing.F) {
	f.Add([]byte("alice"), []byte("secret"), true)
	f.Add([]byte(""), []byte("x"), false)
	f.Fuzz(func(t *testing.T, user, pass []byte, ir bool) {
		var gotUser, gotPass string
		called := false
		l := &loginServer{check: func(_, u, p string) error { called, gotUser, gotPass = true, u, p; return nil }}
		first := []byte(nil)
		if ir {
			first = user
		}
		ch, done, err := l.Next(first)
		if !ir {
			if done || string(ch) != "Username:" {
				t.Fatal("expected Username: challenge")
			}
			ch, done, err = l.Next(user)
		}
		if err != nil {
			if !done || called {
				t.Fatal("error must end the exchange without a check")
			}
			return
		}
		if done || string(ch) != "Password:" {
			t.Fatalf("expected Password:, got %q done=%v", ch, done)
		}
		_, done, err = l.Next(pass)
		if !done {
			t.Fatal("not done after password")
		}
		if err == nil && (!called || gotUser != string(user) || gotPass != string(pass)) {
			t.Fatal("credentials not passed through")
		}
	})
}

func TestParseEnhanced(t *testing.T) {
	assert.Equal(t, gosmtp.EnhancedCode{5, 7, 1}, parseEnhanced("5.7.1", 550))
	assert.Equal(t, gosmtp.EnhancedCode{5, 0, 0}, parseEnhanced("", 550))
	assert.Equal(t, gosmtp.EnhancedCode{4, 0, 0}, parseEnhanced("5.7.1", 451), "class must match the code")
	assert.Equal(t, gosmtp.EnhancedCode{5, 0, 0}, parseEnhanced("5.x.1", 550))
	e := replyError(policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "no\r\nInjected: yes"})
	assert.Equal(t, "no  Injected: yes", e.Message, "a reply text stays one line")
	assert.Equal(t, 451, replyError(policy.Reply{Code: 250}).Code, "a success code is never an error reply")
}

func TestGreetingDeny(t *testing.T) {
	assert.Equal(t, "554 5.7.1 Go away\r\n", greetingDeny(policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "Go away"}))
	assert.Equal(t, "421 4.3.0 Internal error, try again later\r\n", greetingDeny(policy.Fail(nil).Reply))
	assert.Equal(t, "554 5.7.1 Service unavailable\r\n", greetingDeny(policy.Reply{Code: 554}))
}

func TestNewServerConfig(t *testing.T) {
	q := newFileQueue(t)
	chain := policy.NewChain()
	for name, cfg := range map[string]Config{
		"no chain":               {Queue: q},
		"no queue":               {Chain: chain},
		"submission no auth":     {Chain: chain, Queue: q, TLSConfig: testTLS(t), Listeners: []Listener{{Name: "s", Role: RoleSubmission}}},
		"implicit tls no config": {Chain: chain, Queue: q, Authenticator: users, Listeners: []Listener{{Name: "s", Role: RoleImplicitTLS}}},
		"no role":                {Chain: chain, Queue: q, Listeners: []Listener{{Name: "s"}}},
	} {
		_, err := NewServer(cfg)
		assert.ErrorIs(t, err, ErrConfig, name)
	}
	s, err := NewServer(Config{Chain: chain, Queue: q, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS10}})
	require.NoError(t, err)
	assert.Equal(t, uint16(tls.VersionTLS12), s.tls.MinVersion)
	assert.Equal(t, DefaultLimits(), s.limits)
	s2, err := NewServer(Config{Chain: chain, Queue: q, Limits: Limits{MaxErrors: -1, MaxRecipients: 5}})
	require.NoError(t, err)
	assert.Equal(t, 0, s2.limits.MaxErrors)
	assert.Equal(t, 5, s2.limits.MaxRecipients)
}

func TestSelfSignedCertificate(t *testing.T) {
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "data", "cert.pem"), filepath.Join(dir, "data", "key.pem")
	c1, err := SelfSignedCertificate(cf, kf, []string{"mx.example", "192.0.2.1"})
	require.NoError(t, err)
	fi, err := os.Stat(kf)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	require.NoError(t, err)
	assert.Equal(t, []string{"mx.example"}, leaf.DNSNames)
	assert.Len(t, leaf.IPAddresses, 1)
	// A second call loads the same pair.
	c2, err := SelfSignedCertificate(cf, kf, nil)
	require.NoError(t, err)
	assert.Equal(t, c1.Certificate[0], c2.Certificate[0])
	// Half a pair is an error, not an overwrite.
	require.NoError(t, os.Remove(kf))
	_, err = SelfSignedCertificate(cf, kf, nil)
	assert.Error(t, err)
}

func TestCertReloader(t *testing.T) {
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first, err := SelfSignedCertificate(cf, kf, []string{"one.test"})
	require.NoError(t, err)
	r, err := NewCertReloader(cf, kf)
	require.NoError(t, err)
	r.CheckInterval = 0

	// Serve with it over a real handshake.
	h := start(t, Config{TLSConfig: &tls.Config{GetCertificate: r.GetCertificate}})
	peer := func() []byte {
		c, err := gosmtp.DialStartTLS(h.addr(), clientTLS())
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.Noop()) // the handshake happens on first use
		st, ok := c.TLSConnectionState()
		require.True(t, ok)
		return st.PeerCertificates[0].Raw
	}
	assert.Equal(t, first.Certificate[0], peer())

	// Renew: new files with a later mtime.
	dir2 := t.TempDir()
	second, err := SelfSignedCertificate(filepath.Join(dir2, "c"), filepath.Join(dir2, "k"), []string{"two.test"})
	require.NoError(t, err)
	copyFile(t, filepath.Join(dir2, "c"), cf)
	copyFile(t, filepath.Join(dir2, "k"), kf)
	later := time.Now().Add(time.Minute)
	os.Chtimes(cf, later, later)
	os.Chtimes(kf, later, later)
	assert.Equal(t, second.Certificate[0], peer(), "renewed certificate served without restart")

	// A broken file keeps the last good certificate.
	require.NoError(t, os.WriteFile(cf, []byte("garbage"), 0o644))
	later = later.Add(time.Minute)
	os.Chtimes(cf, later, later)
	assert.Equal(t, second.Certificate[0], peer())
	assert.Error(t, r.Err())
}

func copyFile(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o600))
}

// TestReverseDNS checks the forward-confirmed reverse name against a DNS
// server on loopback, and its place in the Received field. The client
// connects from 127.0.0.2: Go's resolver answers 127.0.0.1 from /etc/hosts
// before asking any DNS server.
func TestReverseDNS(t *testing.T) {
	dns := dnstest.New(t, "client.test. IN A 127.0.0.2", "liar.test. IN A 192.0.2.9")
	dns.AddPTR("127.0.0.2", "client.test.")
	var mu sync.Mutex
	var seen string
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		Connect("see", policy.ConnectAction(func(_ context.Context, c *policy.Conn) {
			mu.Lock()
			seen = c.ReverseName
			mu.Unlock()
		}))
	h := start(t, Config{Chain: chain, Resolver: dns.Resolver()})
	send := func() {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", h.addr())
		if err != nil {
			t.Skipf("cannot connect from 127.0.0.2 here: %v", err)
		}
		c := gosmtp.NewClient(nc)
		defer c.Close()
		require.NoError(t, c.Hello("client.test"))
		require.NoError(t, c.Mail("s@client.test", nil))
		require.NoError(t, c.Rcpt("a@mx.test", nil))
		w, err := c.Data()
		require.NoError(t, err)
		io.WriteString(w, simpleBody)
		require.NoError(t, w.Close())
	}
	get := func() string { mu.Lock(); defer mu.Unlock(); return seen }
	send()
	assert.Equal(t, "client.test", get())
	assert.Contains(t, unfold(h.queue.all()[0].Data), "(client.test [127.0.0.2])")

	// A PTR whose name does not resolve back is not used.
	dns.Remove("2.0.0.127.in-addr.arpa.", 12)
	dns.AddPTR("127.0.0.2", "liar.test.")
	send()
	assert.Equal(t, "", get())
	assert.Contains(t, unfold(h.queue.all()[1].Data), "(unknown [127.0.0.2])")
}

// TestBDAT sends with CHUNKING (go-smtp always offers it): the same checks
// apply.
func TestBDAT(t *testing.T) {
	h := start(t, Config{})
	c := begin(t, h.addr())
	body := simpleBody
	c.send("BDAT " + strconv.Itoa(len(body)) + " LAST\r\n" + body)
	code, text := c.reply()
	require.Equal(t, 250, code, text)
	require.Len(t, h.queue.all(), 1)
	assert.True(t, strings.HasSuffix(h.queue.all()[0].Data, body))

	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	bad := "Subject: x\r\n\r\nbare\nlf\r\n"
	c.send("BDAT " + strconv.Itoa(len(bad)) + " LAST\r\n" + bad)
	code, text = c.reply()
	assert.Equal(t, 550, code, text)
	assert.Len(t, h.queue.all(), 1)
}

// TestMailParams checks that MAIL and RCPT parameters reach the rules.
func TestMailParams(t *testing.T) {
	var tx *policy.Transaction
	chain := (&policy.Chain{Logger: testLogger(t)}).Rcpt("all", acceptAll).
		PreQ("see", policy.MessageAction(func(_ context.Context, t *policy.Transaction, _ *policy.Message) { tx = t }))
	h := start(t, Config{Chain: chain, EnableDSN: true})
	c := dialRaw(t, h.addr())
	c.reply()
	assert.Contains(t, c.expect("EHLO client.test", 250), "DSN")
	c.expect("MAIL FROM:<\"john doe\"@client.test> BODY=8BITMIME RET=HDRS ENVID=abc+2Bd SIZE=100 SMTPUTF8", 250)
	c.expect("RCPT TO:<a@mx.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40mx.test", 250)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	code, text := c.reply()
	require.Equal(t, 250, code, text)
	require.NotNil(t, tx)
	assert.Equal(t, `"john doe"@client.test`, tx.From.String())
	assert.Equal(t, policy.MailParams{Size: 100, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "abc+d"}, tx.Params)
	assert.Equal(t, []string{"SUCCESS", "FAILURE"}, tx.Rcpts[0].Notify)
	assert.Equal(t, "RFC822;a@mx.test", tx.Rcpts[0].ORCPT)
	assert.True(t, tx.Conn.ESMTP)

	// Bad addresses get their codes.
	assert.Contains(t, c.expect("MAIL FROM:<a@-bad-.test>", 553), "553 5.1.7")
	c.expect("MAIL FROM:<s@client.test>", 250)
	assert.Contains(t, c.expect("RCPT TO:<a@bad..test>", 501), "501 5.1.3")
}

// TestHELOProtocol checks that HELO (not EHLO) gives "with SMTP".
func TestHELOProtocol(t *testing.T) {
	h := start(t, Config{})
	c := dialRaw(t, h.addr())
	c.reply()
	c.expect("HELO old.client.test", 250)
	c.expect("MAIL FROM:<s@client.test>", 250)
	c.expect("RCPT TO:<a@mx.test>", 250)
	c.expect("DATA", 354)
	c.send(simpleBody + ".\r\n")
	c.reply()
	require.Len(t, h.queue.all(), 1)
	assert.Contains(t, unfold(h.queue.all()[0].Data), " with SMTP id ")
}

// BenchmarkDataStream measures what receive does with a message body:
// the smuggling check, then the spooler's 64 KiB buffer and, past it, the
// connection's spool file (reused across messages, as on one connection),
// copied in receive's 32 KiB pieces. 4 KiB stays in memory; 1 MiB goes
// to the file (go test -bench DataStream).
func BenchmarkDataStream(b *testing.B) {
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for _, size := range []struct {
		name   string
		bytes  int
		inFile bool
	}{{"4KiB", 4 << 10, false}, {"1MiB", 1 << 20, true}} {
		b.Run(size.name, func(b *testing.B) {
			body := []byte(strings.Repeat(line, size.bytes/len(line)))
			f, err := os.CreateTemp(b.TempDir(), "spool-*")
			require.NoError(b, err)
			defer f.Close()
			var r bytes.Reader
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				sp := spoolers.Get().(*spooler)
				sp.file = f
				r.Reset(body)
				if _, err := io.CopyBuffer(sp, &r, sp.copyBuf); err != nil {
					b.Fatal(err)
				}
				sp.chk.Close()
				if sp.chk.Err() != bodyOK {
					b.Fatal(sp.chk.Err())
				}
				if _, err := sp.source(); err != nil {
					b.Fatal(err)
				}
				if sp.written != size.inFile {
					b.Fatalf("written to the spool file: %v, want %v", sp.written, size.inFile)
				}
				*sp = spooler{buf: sp.buf[:0], copyBuf: sp.copyBuf}
				spoolers.Put(sp)
			}
		})
	}
}

// BenchmarkServerMessage measures one 1 MiB message over loopback, end to
// end through the server.
func BenchmarkServerMessage(b *testing.B) {
	h := start(b, Config{Queue: discardQueue{}})
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	body := "Subject: bench\r\n\r\n" + strings.Repeat(line, (1<<20)/len(line))
	c, err := gosmtp.Dial(h.addr())
	require.NoError(b, err)
	defer c.Close()
	require.NoError(b, c.Hello("bench.test"))
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for range b.N {
		require.NoError(b, c.Mail("s@bench.test", nil))
		require.NoError(b, c.Rcpt("a@mx.test", nil))
		w, err := c.Data()
		require.NoError(b, err)
		io.WriteString(w, body)
		require.NoError(b, w.Close())
	}
}

type discardQueue struct{}

func (discardQueue) Enqueue(_ context.Context, _ *policy.Transaction, m *policy.Message) error {
	_, err := m.WriteTo(io.Discard)
	return err
}

var _ = netip.Addr{}

// BenchmarkServerMessageBDAT is BenchmarkServerMessage with CHUNKING (RFC
// 3030): BDAT carries the message without dot-stuffing, through go-smtp's
// pipe and a goroutine per transaction; DATA's body is read in bulk by
// the server's own body reader (body.go). Compare the two MB/s figures to
// see what advertising CHUNKING buys large messages.
func BenchmarkServerMessageBDAT(b *testing.B) {
	h := start(b, Config{Queue: discardQueue{}})
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	body := "Subject: bench\r\n\r\n" + strings.Repeat(line, (1<<20)/len(line))
	nc, err := net.Dial("tcp", h.addr())
	require.NoError(b, err)
	defer nc.Close()
	tc := textproto.NewConn(nc)
	expect := func(code int) {
		b.Helper()
		_, _, err := tc.ReadResponse(code)
		require.NoError(b, err)
	}
	expect(220)
	require.NoError(b, tc.PrintfLine("EHLO bench.test"))
	_, ext, err := tc.ReadResponse(250)
	require.NoError(b, err)
	require.Contains(b, ext, "CHUNKING")
	const chunk = 64 << 10
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for range b.N {
		require.NoError(b, tc.PrintfLine("MAIL FROM:<s@bench.test>"))
		expect(250)
		require.NoError(b, tc.PrintfLine("RCPT TO:<a@mx.test>"))
		expect(250)
		for off := 0; off < len(body); off += chunk {
			end := min(off+chunk, len(body))
			last := ""
			if end == len(body) {
				last = " LAST"
			}
			fmt.Fprintf(tc.W, "BDAT %d%s\r\n", end-off, last)
			tc.W.WriteString(body[off:end])
			require.NoError(b, tc.W.Flush())
			expect(250)
		}
	}
}
