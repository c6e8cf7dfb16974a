package milter

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

type staticAuth map[string]string

func (a staticAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) error {
	if p, ok := a[user]; ok && p == pass {
		return nil
	}
	return errors.New("bad credentials")
}

// TestTLSAndAuth: after STARTTLS the milter gets HELO again with the TLS
// macros, and MAIL carries the AUTH macros.
func TestTLSAndAuth(t *testing.T) {
	dir := t.TempDir()
	cert, err := smtp.SelfSignedCertificate(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"mx.test.example"})
	require.NoError(t, err)
	f := startFake(t, "tcp", nil)
	m := newMilter(t, f, nil)
	t.Cleanup(func() { m.Close() })
	chain := &policy.Chain{Logger: testLogger(t)}
	Register(chain, m)
	chain.Rcpt("accept", func(context.Context, *policy.Transaction, policy.Recipient) policy.Verdict { return policy.Accept() })
	q := &memQueue{}
	addr := serveWith(t, chain, q, func(c *smtp.Config) {
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		c.Authenticator = staticAuth{"alice": "secret"}
	})

	c, err := gosmtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "alice", "secret")))
	require.NoError(t, c.Mail("alice@sender.example", nil))
	require.NoError(t, c.Rcpt("bob@rcpt.example", nil))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.Copy(w, strings.NewReader(testMessage))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, c.Quit())

	assert.Equal(t, 2, count(f.Events(), "helo localhost"), "HELO before and after STARTTLS: %q", f.Events())
	assert.Equal(t, "TLSv1.3", f.Macro("helo", "{tls_version}"))
	assert.NotEmpty(t, f.Macro("helo", "{cipher}"))
	assert.Equal(t, "alice", f.Macro("mail", "{auth_authen}"))
	assert.Equal(t, "PLAIN", f.Macro("mail", "{auth_type}"))
	assert.Len(t, q.all(), 1)
}

// TestLeadingSpace: a milter that asks for header values as they are
// (SMFIP_HDR_LEADSPC) gets the space after the colon, and gives it.
func TestLeadingSpace(t *testing.T) {
	f := startFake(t, "tcp", func(f *fake) {
		f.protocol = gomilter.OptHeaderLeadingSpace
		f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
			return gomilter.RespContinue, m.AddHeader("X-Milter", "  two spaces")
		}
	})
	h := startServer(t, newMilter(t, f, nil))
	require.NoError(t, h.send("alice@sender.example", twoRcpts, testMessage).data)
	msgs := f.Messages()
	require.Len(t, msgs, 1)
	assert.Contains(t, msgs[0], "\nSubject: hello\n")
	q := h.queue.all()
	require.Len(t, q, 1)
	assert.Contains(t, q[0].raw, "\r\nX-Milter:  two spaces\r\n\r\n")
}

// TestEmptyBody: a message without a body reaches the end of message.
func TestEmptyBody(t *testing.T) {
	f := startFake(t, "tcp", nil)
	h := startServer(t, newMilter(t, f, nil))
	require.NoError(t, h.send("alice@sender.example", twoRcpts, "Subject: empty\r\n\r\n").data)
	assert.Contains(t, f.Events(), "eom")
	assert.Len(t, h.queue.all(), 1)
}

// TestPostQ: at postq (a transaction rebuilt from the queue, with a Conn
// of its own or none) the rule runs a whole milter session for the
// message, and closes it.
func TestPostQ(t *testing.T) {
	for _, c := range []struct {
		name string
		conn *policy.Conn
		want []string
	}{
		{"no connection", nil, []string{"connect unknown unknown ", "helo mx.test.example"}},
		{"rebuilt connection", &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("192.0.2.1:4000"), Helo: "client.example", ReverseName: "client.example"},
			[]string{"connect client.example tcp4 192.0.2.1", "helo client.example"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, "tcp", func(f *fake) {
				f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
					return gomilter.RespContinue, m.AddHeader("X-Milter", "postq")
				}
			})
			m := newMilter(t, f, nil)
			defer m.Close()
			tx := policy.NewTransaction(c.conn, "postq1")
			tx.From = policy.MustParseAddress("alice@sender.example")
			tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("bob@rcpt.example")}}
			msg, err := policy.NewMessage(strings.NewReader(testMessage), int64(len(testMessage)), nil)
			require.NoError(t, err)
			v := m.MessageRule()(context.Background(), tx, msg)
			assert.Equal(t, policy.KindNext, v.Kind)
			assert.Equal(t, "postq", msg.Header.Get("X-Milter"))
			f.waitClosed(t, 1)
			want := append(c.want, "mail <alice@sender.example>", "rcpt <bob@rcpt.example>", "data", "eoh", "eom", "close")
			assert.Equal(t, want, f.Events())
			assert.Equal(t, 0, m.sessionCount())
		})
	}
}

// TestConcurrent: sessions at once, each with its own milter connection;
// every message is seen once and queued as the milter changed it.
func TestConcurrent(t *testing.T) {
	f := startFake(t, "tcp", func(f *fake) {
		f.eom = func(m gomilter.Modifier, _ *fakeConn) (*gomilter.Response, error) {
			return gomilter.RespContinue, m.AddHeader("X-Milter", "seen")
		}
	})
	// The idle timeout closes each connection soon after its QUIT, and is
	// long enough not to close one between two messages of a session.
	m := newMilter(t, f, func(o *Options) { o.IdleTimeout = 2 * time.Second })
	h := startServer(t, m)
	const clients, each = 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, clients*each)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := gosmtp.Dial(h.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Hello("client.test.example"); err != nil {
				errs <- err
				return
			}
			for range each {
				if err := transact(c, "alice@sender.example", twoRcpts, testMessage); err != nil {
					errs <- err
				}
			}
			c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	q := h.queue.all()
	require.Len(t, q, clients*each)
	for _, e := range q {
		assert.Contains(t, e.raw, "X-Milter: seen\r\n")
	}
	assert.Equal(t, clients*each, count(f.Events(), "eom"))
	f.waitClosed(t, clients)
	assert.Equal(t, clients, f.Conns(), "one milter connection per SMTP session")
}

// transact runs one transaction on c.
func transact(c *gosmtp.Client, from string, rcpts []string, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	return w.Close()
}

// TestClosedWithSession: the milter connection of an SMTP session is
// closed when the client quits (policy.Conn.Closed), not an idle timeout
// later.
func TestClosedWithSession(t *testing.T) {
	f := startFake(t, "tcp", nil)
	m := newMilter(t, f, func(o *Options) { o.IdleTimeout = time.Hour })
	h := startServer(t, m)
	require.NoError(t, h.send("alice@sender.example", twoRcpts, testMessage).data)
	f.waitClosed(t, 1) // 10 s at most, far below the hour
	assert.Equal(t, "close", f.Events()[len(f.Events())-1])
	assert.Equal(t, 0, m.sessionCount()) // dropped before the QUIT was sent
}
