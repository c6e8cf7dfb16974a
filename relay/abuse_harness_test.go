package relay_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// The anti-abuse rules are tested through mtakit's own SMTP server on
// loopback, so that connect and helo rules run where a real server runs
// them.

type abQueue struct{ n atomic.Int32 }

func (q *abQueue) Enqueue(context.Context, *policy.Transaction, *policy.Message) error {
	q.n.Add(1)
	return nil
}

type abBadCreds struct{}

func (abBadCreds) Error() string   { return "bad credentials" }
func (abBadCreds) Temporary() bool { return false }

// abAuth accepts alice@local.test with the password "pw".
type abAuth struct{}

func (abAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) error {
	if user == "alice@local.test" && pass == "pw" {
		return nil
	}
	return abBadCreds{}
}

// abServe serves chain on an MTA and a submission listener (AUTH allowed
// without TLS) on 127.0.0.1 and returns their addresses.
func abServe(t *testing.T, chain *policy.Chain) (mta, submission string) {
	t.Helper()
	srv, err := smtp.NewServer(smtp.Config{Hostname: "mx.local.test", Chain: chain, Queue: &abQueue{},
		Authenticator: abAuth{}, SpoolDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); srv.Close() })
	var addrs []string
	for _, lc := range []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}, {Name: "submission", Role: smtp.RoleSubmission, AllowInsecureAuth: true}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addrs = append(addrs, ln.Addr().String())
		go srv.Serve(ctx, ln, lc)
	}
	return addrs[0], addrs[1]
}

// abClient is a raw SMTP session from a chosen loopback source address.
type abClient struct {
	t        *testing.T
	tp       *textproto.Conn
	greeting string
}

// abDial connects to addr from the source address src and reads the
// greeting, whatever its code.
func abDial(t *testing.T, addr, src string) *abClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	ac := &abClient{t: t, tp: textproto.NewConn(c)}
	t.Cleanup(func() { ac.tp.Close() })
	ac.greeting = ac.read()
	return ac
}

// read reads one reply and returns its last line as "code text".
func (c *abClient) read() string {
	c.t.Helper()
	code, msg, err := c.tp.ReadResponse(0)
	var te *textproto.Error
	if err != nil && !errors.As(err, &te) {
		require.NoError(c.t, err)
	}
	lines := strings.Split(msg, "\n")
	return fmt.Sprintf("%d %s", code, lines[len(lines)-1])
}

// cmd sends line and returns the reply's last line.
func (c *abClient) cmd(line string) string {
	c.t.Helper()
	require.NoError(c.t, c.tp.PrintfLine("%s", line))
	return c.read()
}

// login says EHLO and authenticates with AUTH PLAIN.
func (c *abClient) login(user, pass string) {
	c.t.Helper()
	require.True(c.t, strings.HasPrefix(c.cmd("EHLO client.example"), "250"))
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	require.True(c.t, strings.HasPrefix(c.cmd("AUTH PLAIN "+resp), "235"))
}

// acceptLocal is the rcpt rule of the tests' chains: recipients of
// local.test, and any for an authenticated client.
func acceptLocal(_ context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
	if r.Addr.Domain == "local.test" || tx.Conn.Authenticated() {
		return policy.Accept()
	}
	return policy.Next()
}
