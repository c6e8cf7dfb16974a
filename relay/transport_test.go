package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/relay"
)

const testMsg = "From: a@src.test\r\nTo: u@dst.test\r\nSubject: test\r\n\r\nHello\r\n.leading dot\r\n..two dots\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n" +
	"a long line " + "xxxxxxxxxx" + "\r\n.\r\nlast line\r\n"

// recordingDial dials like net.Dialer and records the addresses.
type recordingDial struct {
	mu    sync.Mutex
	addrs []string
}

func (r *recordingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	r.mu.Lock()
	r.addrs = append(r.addrs, addr)
	r.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (r *recordingDial) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.addrs...)
}

func newMX(dnsSrv *dnstest.Server, port int) *relay.MX {
	return &relay.MX{Resolver: dnsSrv.Resolver(), Hostname: "relay.test", Port: port}
}

func TestMXRouting(t *testing.T) {
	recv := startReceiver(t, receiverOpts{})
	d := dnstest.New(t,
		// mx1 has an address where nothing listens: refused.
		`prio.test. MX 20 mx2.prio.test.`,
		`prio.test. MX 10 mx1.prio.test.`,
		`mx1.prio.test. A 127.0.0.3`,
		`mx2.prio.test. A 127.0.0.1`,
		// both up: the lower preference must be the one used.
		`up.test. MX 5 a.up.test.`,
		`up.test. MX 50 b.up.test.`,
		`a.up.test. A 127.0.0.1`,
		`b.up.test. A 127.0.0.4`,
		`noa.test. A 127.0.0.1`,
		`null.test. MX 0 .`,
		`txtonly.test. TXT "no mail here"`,
		`fail.test. A 127.0.0.1`,
		`nohost.test. MX 10 missing.nohost.test.`,
	)
	d.Fail("fail.test.", dns.RcodeServerFailure)

	tests := []struct {
		name      string
		rcpt      string
		want      string
		wantDials []string
	}{
		{"lowest preference first, next when refused", "u@prio.test", "250 2.0.0", []string{"127.0.0.3", "127.0.0.1"}},
		{"lowest preference used when up", "u@up.test", "250 2.0.0", []string{"127.0.0.1"}},
		{"fallback to A without MX", "u@noa.test", "250 2.0.0", []string{"127.0.0.1"}},
		{"null MX", "u@null.test", "556 5.1.10", nil},
		{"NXDOMAIN", "u@nx.test", "550 5.1.2", nil},
		{"no MX and no A", "u@txtonly.test", "550 5.1.2", nil},
		{"SERVFAIL is temporary", "u@fail.test", "451 4.4.3", nil},
		{"MX host without address", "u@nohost.test", "550 5.4.4", nil},
		{"address literal", "u@[127.0.0.1]", "250 2.0.0", []string{"127.0.0.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rd := &recordingDial{}
			mx := newMX(d, recv.Port)
			mx.Dial = rd.dial
			before := len(recv.messages())
			got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", tc.rcpt))
			require.Len(t, got, 1)
			assert.Equal(t, tc.want, codes(got)[0], got[0].String())
			var hosts []string
			for _, a := range rd.got() {
				h, _, _ := net.SplitHostPort(a)
				hosts = append(hosts, h)
			}
			assert.Equal(t, tc.wantDials, hosts)
			if got[0].Code == 250 {
				msgs := recv.messages()
				require.Len(t, msgs, before+1)
				m := msgs[len(msgs)-1]
				assert.Equal(t, []string{tc.rcpt}, m.Rcpts)
				assert.Equal(t, "s@src.test", m.From)
				assert.Equal(t, "relay.test", m.Helo)
				assert.Equal(t, testMsg, string(m.Data), "message bytes intact")
			} else {
				assert.Len(t, recv.messages(), before, "nothing delivered")
			}
		})
	}
}

func TestMXNoAnswerIsTemporary(t *testing.T) {
	d := dnstest.New(t, `down.test. MX 10 mx.down.test.`, `mx.down.test. A 127.0.0.3`)
	// Port 1 on 127.0.0.3: connection refused.
	got := newMX(d, 1).Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@down.test", "v@down.test"))
	assert.Equal(t, []string{"451 4.4.1", "451 4.4.1"}, codes(got))
}

func TestMXPerRecipientReplies(t *testing.T) {
	recv := startReceiver(t, receiverOpts{})
	recv.rcptReply = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "busy@"):
			return smtpError(450, smtp.EnhancedCode{4, 2, 1}, "Mailbox busy")
		case strings.HasPrefix(rcpt, "nobody@"):
			return smtpError(550, smtp.EnhancedCode{5, 1, 1}, "No such user")
		}
		return nil
	}
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`, `other.test. A 127.0.0.1`)
	got := newMX(d, recv.Port).Deliver(testCtx(t), delivery(t, testMsg, "s@src.test",
		"ok@dst.test", "busy@dst.test", "ok@other.test", "nobody@dst.test", "ok2@dst.test"))
	assert.Equal(t, []string{"250 2.0.0", "450 4.2.1", "250 2.0.0", "550 5.1.1", "250 2.0.0"}, codes(got))
	assert.Equal(t, "Mailbox busy", got[1].Text)
	assert.Equal(t, "No such user", got[3].Text)
	msgs := recv.messages()
	require.Len(t, msgs, 2, "one session per domain")
	assert.Equal(t, []string{"ok@dst.test", "ok2@dst.test"}, msgs[0].Rcpts, "one transaction carries every accepted recipient of the domain")
	assert.Equal(t, []string{"ok@other.test"}, msgs[1].Rcpts)
}

func TestMXDeferThenDeliver(t *testing.T) {
	recv := startReceiver(t, receiverOpts{})
	var n atomic.Int32
	recv.rcptReply = func(string) error {
		if n.Add(1) == 1 {
			return smtpError(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted, try again later")
		}
		return nil
	}
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`)
	mx := newMX(d, recv.Port)
	first := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@dst.test"))
	assert.Equal(t, []string{"451 4.7.1"}, codes(first))
	assert.True(t, first[0].Temporary())
	assert.Empty(t, recv.messages())
	second := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@dst.test"))
	assert.Equal(t, []string{"250 2.0.0"}, codes(second))
	require.Len(t, recv.messages(), 1)
}

func TestMXStartTLS(t *testing.T) {
	d := dnstest.New(t, `tls.test. MX 10 mx.tls.test.`, `mx.tls.test. A 127.0.0.1`)
	tlsRecv := startReceiver(t, receiverOpts{TLS: true})
	plainRecv := startReceiver(t, receiverOpts{})
	pool := selfSigned(t).pool

	t.Run("opportunistic uses STARTTLS when offered", func(t *testing.T) {
		got := newMX(d, tlsRecv.Port).Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@tls.test"))
		assert.Equal(t, []string{"250 2.0.0"}, codes(got))
		msgs := tlsRecv.messages()
		require.NotEmpty(t, msgs)
		assert.True(t, msgs[len(msgs)-1].TLS, "receiver saw TLS")
		assert.Equal(t, "relay.test", msgs[len(msgs)-1].Helo, "EHLO repeated after STARTTLS")
	})
	t.Run("required and verified", func(t *testing.T) {
		mx := newMX(d, tlsRecv.Port)
		mx.TLS = relay.TLSRequired
		mx.TLSConfig = &tls.Config{RootCAs: pool}
		got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@tls.test"))
		assert.Equal(t, []string{"250 2.0.0"}, codes(got))
		msgs := tlsRecv.messages()
		assert.True(t, msgs[len(msgs)-1].TLS)
	})
	t.Run("required fails when not offered", func(t *testing.T) {
		mx := newMX(d, plainRecv.Port)
		mx.TLS = relay.TLSRequired
		got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@tls.test"))
		assert.Equal(t, []string{"450 4.7.4"}, codes(got))
		assert.Empty(t, plainRecv.messages())
	})
	t.Run("required fails when the certificate does not verify", func(t *testing.T) {
		mx := newMX(d, tlsRecv.Port)
		mx.TLS = relay.TLSRequired
		mx.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()}
		before := len(tlsRecv.messages())
		got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@tls.test"))
		assert.Equal(t, []string{"450 4.7.5"}, codes(got))
		assert.Len(t, tlsRecv.messages(), before)
	})
	t.Run("opportunistic retries in plaintext after a failed handshake", func(t *testing.T) {
		mx := newMX(d, tlsRecv.Port)
		mx.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()} // verification fails
		sessions := tlsRecv.sessionCount()
		got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@tls.test"))
		assert.Equal(t, []string{"250 2.0.0"}, codes(got))
		msgs := tlsRecv.messages()
		assert.False(t, msgs[len(msgs)-1].TLS, "second attempt in plaintext")
		assert.Equal(t, sessions+2, tlsRecv.sessionCount(), "two connections")
	})
	t.Run("per-message REQUIRETLS needs the extension", func(t *testing.T) {
		dl := delivery(t, testMsg, "s@src.test", "u@tls.test")
		dl.Tx.Params.RequireTLS = true
		mx := newMX(d, tlsRecv.Port)
		mx.TLSConfig = &tls.Config{RootCAs: pool}
		got := mx.Deliver(testCtx(t), dl)
		assert.Equal(t, []string{"550 5.7.30"}, codes(got))
	})
}

func TestMXParamsAndSize(t *testing.T) {
	recv := startReceiver(t, receiverOpts{DSN: true, MaxBytes: 1 << 20})
	small := startReceiver(t, receiverOpts{MaxBytes: 20})
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`)

	dl := delivery(t, testMsg, "s@src.test", "u@dst.test", "v@dst.test")
	dl.Tx.Params = policy.MailParams{Body: "8BITMIME", Ret: "HDRS", EnvID: "env+id=1", SMTPUTF8: true}
	dl.Rcpts[0].Notify = []string{"SUCCESS", "FAILURE"}
	dl.Rcpts[0].ORCPT = "rfc822;orig@dst.test"
	got := newMX(d, recv.Port).Deliver(testCtx(t), dl)
	assert.Equal(t, []string{"250 2.0.0", "250 2.0.0"}, codes(got))
	msgs := recv.messages()
	require.Len(t, msgs, 1)
	m := msgs[0]
	assert.Equal(t, int64(len(testMsg)), m.MailOpts.Size)
	assert.Equal(t, smtp.Body8BitMIME, m.MailOpts.Body)
	assert.True(t, m.MailOpts.UTF8)
	assert.Equal(t, smtp.DSNReturnHeaders, m.MailOpts.Return)
	assert.Equal(t, "env+id=1", m.MailOpts.EnvelopeID)
	assert.Equal(t, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}, m.RcptOpts[0].Notify)
	assert.Equal(t, "orig@dst.test", m.RcptOpts[0].OriginalRecipient)
	assert.Empty(t, m.RcptOpts[1].Notify)

	got = newMX(d, small.Port).Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@dst.test"))
	assert.Equal(t, []string{"552 5.3.4"}, codes(got))
	assert.Empty(t, small.messages())
}

func TestMXNoBareLineEnds(t *testing.T) {
	recv := startReceiver(t, receiverOpts{})
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`)
	body := "Subject: x\r\n\r\nbare LF here\nand a bare CR\rthen\n.\nsmuggled?\r\n.\r\nend"
	got := newMX(d, recv.Port).Deliver(testCtx(t), delivery(t, body, "s@src.test", "u@dst.test"))
	assert.Equal(t, []string{"250 2.0.0"}, codes(got))
	msgs := recv.messages()
	require.Len(t, msgs, 1)
	data := string(msgs[0].Data)
	for i := 0; i < len(data); i++ {
		if data[i] == '\n' {
			require.True(t, i > 0 && data[i-1] == '\r', "bare LF at %d in %q", i, data)
		}
		if data[i] == '\r' {
			require.True(t, i+1 < len(data) && data[i+1] == '\n', "bare CR at %d in %q", i, data)
		}
	}
	assert.Equal(t, "Subject: x\r\n\r\nbare LF here\r\nand a bare CR\r\nthen\r\n.\r\nsmuggled?\r\n.\r\nend\r\n", data)
}

// scriptServer accepts one connection and plays an SMTP server that
// closes the connection once the client starts sending the message.
func scriptServer(t *testing.T, closeAfterDataLine bool) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		w := func(s string) { c.Write([]byte(s + "\r\n")) }
		w("220 script.test ESMTP")
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
			case strings.HasPrefix(cmd, "EHLO"):
				w("250-script.test")
				w("250 8BITMIME")
			case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"):
				w("250 2.0.0 ok")
			case cmd == "DATA":
				w("354 go ahead")
				if closeAfterDataLine {
					br.ReadString('\n')
				}
				return // close mid-DATA
			}
		}
	}()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	var port int
	for _, ch := range p {
		port = port*10 + int(ch-'0')
	}
	return port
}

func TestMXConnectionLostMidData(t *testing.T) {
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`)
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("y", 998)+"\r\n", 2000)
	for _, afterLine := range []bool{false, true} {
		port := scriptServer(t, afterLine)
		got := newMX(d, port).Deliver(testCtx(t), delivery(t, big, "s@src.test", "u@dst.test", "v@dst.test"))
		assert.Equal(t, []string{"451 4.4.2", "451 4.4.2"}, codes(got), got[0].String())
	}
}

func TestMXContextDeadline(t *testing.T) {
	// A server that accepts and never greets.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	d := dnstest.New(t, `dst.test. MX 10 mx.dst.test.`, `mx.dst.test. A 127.0.0.1`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	got := newMX(d, l.Addr().(*net.TCPAddr).Port).Deliver(ctx, delivery(t, testMsg, "s@src.test", "u@dst.test"))
	require.Len(t, got, 1)
	assert.True(t, got[0].Temporary(), got[0].String())
}

func TestSmarthost(t *testing.T) {
	users := map[string]string{"relayuser": "s3cret"}
	tlsRecv := startReceiver(t, receiverOpts{TLS: true, Users: users})
	plainRecv := startReceiver(t, receiverOpts{Users: users, Insecure: true})
	implicit := startReceiver(t, receiverOpts{Implicit: true, Users: users})
	pool := selfSigned(t).pool

	t.Run("AUTH over STARTTLS", func(t *testing.T) {
		h := &relay.Smarthost{Addr: tlsRecv.Addr, Hostname: "relay.test", TLS: relay.TLSRequired,
			TLSConfig: &tls.Config{RootCAs: pool}, Username: "relayuser", Password: "s3cret"}
		got := h.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@far.test", "v@other.test"))
		assert.Equal(t, []string{"250 2.0.0", "250 2.0.0"}, codes(got))
		msgs := tlsRecv.messages()
		require.Len(t, msgs, 1)
		assert.True(t, msgs[0].TLS)
		assert.Equal(t, "relayuser", msgs[0].AuthUser)
		assert.Equal(t, []string{"u@far.test", "v@other.test"}, msgs[0].Rcpts)
		assert.Equal(t, testMsg, string(msgs[0].Data))
	})
	t.Run("wrong password defers", func(t *testing.T) {
		h := &relay.Smarthost{Addr: tlsRecv.Addr, Hostname: "relay.test", TLSConfig: &tls.Config{RootCAs: pool}, Username: "relayuser", Password: "bad"}
		got := h.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@far.test"))
		assert.Equal(t, []string{"450 4.7.8"}, codes(got))
	})
	t.Run("no credentials over plaintext", func(t *testing.T) {
		h := &relay.Smarthost{Addr: plainRecv.Addr, Hostname: "relay.test", Username: "relayuser", Password: "s3cret"}
		got := h.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@far.test"))
		assert.Equal(t, []string{"450 4.7.0"}, codes(got))
		assert.Empty(t, plainRecv.messages())
		h.AllowInsecureAuth = true
		got = h.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@far.test"))
		assert.Equal(t, []string{"250 2.0.0"}, codes(got))
		require.Len(t, plainRecv.messages(), 1)
		assert.Equal(t, "relayuser", plainRecv.messages()[0].AuthUser)
	})
	t.Run("implicit TLS and Route.Target override", func(t *testing.T) {
		h := &relay.Smarthost{Addr: "127.0.0.1:1", Hostname: "relay.test", TLS: relay.TLSImplicit,
			TLSConfig: &tls.Config{RootCAs: pool}, Username: "relayuser", Password: "s3cret"}
		dl := delivery(t, testMsg, "s@src.test", "u@far.test")
		dl.Route = policy.Route{Transport: "smtp", Target: implicit.Addr}
		got := h.Deliver(testCtx(t), dl)
		assert.Equal(t, []string{"250 2.0.0"}, codes(got))
		require.Len(t, implicit.messages(), 1)
		assert.True(t, implicit.messages()[0].TLS)
	})
	t.Run("connection refused defers", func(t *testing.T) {
		h := &relay.Smarthost{Addr: "127.0.0.1:1", Hostname: "relay.test"}
		got := h.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@far.test", "v@far.test"))
		assert.Equal(t, []string{"451 4.4.1", "451 4.4.1"}, codes(got))
	})
	t.Run("malformed delivery defers", func(t *testing.T) {
		h := &relay.Smarthost{Addr: tlsRecv.Addr, Hostname: "relay.test"}
		dl := delivery(t, testMsg, "s@src.test", "u@far.test")
		dl.Message = nil
		assert.Equal(t, []string{"451 4.3.0"}, codes(h.Deliver(testCtx(t), dl)))
		assert.Nil(t, h.Deliver(testCtx(t), nil))
	})
}

func TestLMTP(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lmtp.sock")
	recv := startReceiver(t, receiverOpts{LMTP: true, Unix: sock})
	recv.rcptReply = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "unknown@") {
			return smtpError(550, smtp.EnhancedCode{5, 1, 1}, "User unknown")
		}
		return nil
	}
	recv.dataReply = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "full@"):
			return smtpError(452, smtp.EnhancedCode{4, 2, 2}, "Mailbox full")
		case strings.HasPrefix(rcpt, "gone@"):
			return smtpError(550, smtp.EnhancedCode{5, 2, 1}, "Mailbox disabled")
		}
		return nil
	}
	l := &relay.LMTP{Network: "unix", Addr: sock, Hostname: "relay.test"}
	got := l.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test",
		"a@local.test", "full@local.test", "unknown@local.test", "gone@local.test", "b@local.test"))
	assert.Equal(t, []string{"250 2.0.0", "452 4.2.2", "550 5.1.1", "550 5.2.1", "250 2.0.0"}, codes(got))
	assert.Contains(t, got[1].Text, "Mailbox full")
	msgs := recv.messages()
	require.Len(t, msgs, 1)
	assert.Equal(t, "relay.test", msgs[0].Helo, "LHLO name")
	assert.Equal(t, []string{"a@local.test", "full@local.test", "gone@local.test", "b@local.test"}, msgs[0].Rcpts)
	assert.Equal(t, testMsg, string(msgs[0].Data))

	t.Run("Route.Target overrides the address", func(t *testing.T) {
		tcp := startReceiver(t, receiverOpts{LMTP: true})
		l := &relay.LMTP{Network: "unix", Addr: "/nonexistent.sock", Hostname: "relay.test"}
		dl := delivery(t, testMsg, "s@src.test", "a@local.test")
		dl.Route = policy.Route{Transport: "lmtp", Target: tcp.Addr}
		assert.Equal(t, []string{"250 2.0.0"}, codes(l.Deliver(testCtx(t), dl)))
		require.Len(t, tcp.messages(), 1)
		dl.Route.Target = ""
		got := l.Deliver(testCtx(t), dl)
		assert.True(t, got[0].Temporary(), got[0].String())
	})
}

// REQUIRETLS binds relaying; the local hand-off over LMTP ignores it.
func TestLMTPIgnoresRequireTLS(t *testing.T) {
	recv := startReceiver(t, receiverOpts{LMTP: true})
	dl := delivery(t, testMsg, "s@src.test", "a@local.test")
	dl.Tx.Params.RequireTLS = true
	got := (&relay.LMTP{Addr: recv.Addr, Hostname: "relay.test"}).Deliver(testCtx(t), dl)
	assert.Equal(t, []string{"250 2.0.0"}, codes(got))
	require.Len(t, recv.messages(), 1)
	assert.False(t, recv.messages()[0].MailOpts.RequireTLS)
}

// Equal preferences are tried in random order (RFC 5321 section 5.1).
func TestMXEqualPreferenceRandomized(t *testing.T) {
	d := dnstest.New(t,
		`eq.test. MX 10 a.eq.test.`, `eq.test. MX 10 b.eq.test.`, `eq.test. MX 20 c.eq.test.`,
		`a.eq.test. A 127.0.0.5`, `b.eq.test. A 127.0.0.6`, `c.eq.test. A 127.0.0.7`)
	var mu sync.Mutex
	var order []string
	mx := newMX(d, 25)
	mx.Dial = func(_ context.Context, _, addr string) (net.Conn, error) {
		mu.Lock()
		order = append(order, addr)
		mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errRefused}
	}
	firsts := map[string]int{}
	for range 64 {
		order = nil
		got := mx.Deliver(testCtx(t), delivery(t, testMsg, "s@src.test", "u@eq.test"))
		require.Equal(t, []string{"451 4.4.1"}, codes(got))
		require.Len(t, order, 3)
		require.Equal(t, "127.0.0.7:25", order[2], "preference 20 last")
		firsts[order[0]]++
	}
	assert.Len(t, firsts, 2, "both equal-preference hosts came first at least once: %v", firsts)
}

var errRefused = &net.AddrError{Err: "connection refused (test)"}
