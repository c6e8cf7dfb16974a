package relay_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/relay"
	"github.com/mtakit/mtakit/smtp"
)

// tableServer is a real mtakit server on loopback with the table's rules:
// local recipients to maildirs under root, the rest to a recording
// "smtp" transport. Every delivery attempt is announced on delivered.
type tableServer struct {
	addr      string
	root      string
	delivered chan *policy.Delivery
}

func startTableServer(t *testing.T, tab *relay.RecipientTable) *tableServer {
	t.Helper()
	ts := &tableServer{root: t.TempDir(), delivered: make(chan *policy.Delivery, 20)}
	chain := tableChain(tab)
	md := &queue.Maildir{Root: ts.root}
	store, err := queue.Open(t.TempDir(), queue.SpoolConfig{})
	require.NoError(t, err)
	srv := &mtakit.Server{
		Hostname: "mx.doe.test",
		Chain:    chain,
		Store:    store,
		Logger:   quietLog(),
		SMTP:     smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Role: smtp.RoleMTA}}},
		Delivery: queue.Config{Transports: map[string]queue.Transport{
			"maildir": queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
				r := md.Deliver(ctx, d)
				ts.delivered <- d
				return r
			}),
			"smtp": queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
				ts.delivered <- d
				return make([]policy.Reply, len(d.Rcpts))
			}),
		}},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ts.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, []net.Listener{ln}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return ts
}

// sendTo sends one message to rcpts and returns the reply to each RCPT
// (nil for 250) and the error of DATA.
func sendTo(t *testing.T, addr string, rcpts []string, subject string) ([]error, error) {
	t.Helper()
	c, err := gosmtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.org"))
	require.NoError(t, c.Mail("sender@example.org", nil))
	var errs []error
	ok := 0
	for _, r := range rcpts {
		err := c.Rcpt(r, nil)
		errs = append(errs, err)
		if err == nil {
			ok++
		}
	}
	if ok == 0 {
		return errs, nil
	}
	w, err := c.Data()
	require.NoError(t, err)
	_, err = w.Write([]byte("From: <sender@example.org>\r\nSubject: " + subject + "\r\n\r\nbody\r\n"))
	require.NoError(t, err)
	return errs, w.Close()
}

// waitDelivered collects delivered recipients (address -> route target)
// until n arrived.
func (ts *tableServer) waitDelivered(t *testing.T, n int) map[string]policy.Delivery {
	t.Helper()
	got := map[string]policy.Delivery{}
	timeout := time.After(20 * time.Second)
	for len(got) < n {
		select {
		case d := <-ts.delivered:
			for _, r := range d.Rcpts {
				got[r.Addr.String()] = *d
			}
		case <-timeout:
			t.Fatalf("delivered %d of %d: %v", len(got), n, got)
		}
	}
	return got
}

func mailboxFiles(t *testing.T, root, box string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, box, "new"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(root, box, "new", e.Name()))
		require.NoError(t, err)
		out = append(out, string(b))
	}
	return out
}

func replyCode(t *testing.T, err error) (int, string) {
	t.Helper()
	var se *gosmtp.SMTPError
	require.ErrorAs(t, err, &se)
	return se.Code, strings.Join([]string{itoa(se.EnhancedCode[0]), itoa(se.EnhancedCode[1]), itoa(se.EnhancedCode[2])}, ".")
}

func itoa(i int) string { return string(rune('0' + i)) }

func TestRecipientTableOverSMTP(t *testing.T) {
	dir := t.TempDir()
	aliasFile := filepath.Join(dir, "aliases")
	require.NoError(t, os.WriteFile(aliasFile, []byte("# the family\nfamily@doe.test: john@doe.test, jane@doe.test\n"), 0o600))
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"},
		Accounts: []string{"john@doe.test", "jane@doe.test"}, AliasFile: aliasFile, Logger: quietLog()})
	require.NoError(t, err)
	ts := startTableServer(t, tab)

	t.Run("unknown user 550 5.1.1 at RCPT", func(t *testing.T) {
		errs, _ := sendTo(t, ts.addr, []string{"nosuchuser-zz9@doe.test"}, "unknown")
		code, enh := replyCode(t, errs[0])
		assert.Equal(t, 550, code)
		assert.Equal(t, "5.1.1", enh)
		assert.Contains(t, errs[0].Error(), "User unknown in virtual mailbox table")
		_, err := os.Stat(filepath.Join(ts.root, "nosuchuser-zz9"))
		assert.ErrorIs(t, err, os.ErrNotExist, "no maildir for an invented name")
	})

	// A bare "RCPT TO:<postmaster>" is refused by go-smtp's parser before
	// any rule runs (the smtp package's business); the rules' handling of
	// it is tested in TestRecipientTableExpand.
	t.Run("alias to two accounts, subaddress, abuse", func(t *testing.T) {
		errs, err := sendTo(t, ts.addr, []string{"family@doe.test", "John+Tag@doe.test", "abuse@doe.test"}, "fan-out")
		for _, e := range errs {
			require.NoError(t, e)
		}
		require.NoError(t, err)
		got := ts.waitDelivered(t, 3)
		assert.Equal(t, "rfc822;family@doe.test", findRcpt(got, "jane@doe.test").ORCPT)
		// john is reached three ways (alias, subaddress, abuse) but gets
		// the one copy of each distinct recipient: john@ by the alias and
		// the abuse default, John+Tag@ on its own.
		require.Len(t, got, 3, "%v", got)
		assert.Len(t, mailboxFiles(t, ts.root, "jane"), 1)
		john := mailboxFiles(t, ts.root, "john")
		assert.Len(t, john, 2)
		var tagged int
		for _, m := range john {
			if strings.Contains(m, "Delivered-To: John+Tag@doe.test") {
				tagged++
			}
		}
		assert.Equal(t, 1, tagged)
		_, err = os.Stat(filepath.Join(ts.root, "john+tag"))
		assert.ErrorIs(t, err, os.ErrNotExist)
	})

	t.Run("reload without restart", func(t *testing.T) {
		errs, _ := sendTo(t, ts.addr, []string{"team@doe.test"}, "before")
		code, _ := replyCode(t, errs[0])
		require.Equal(t, 550, code)
		require.NoError(t, os.WriteFile(aliasFile, []byte("family@doe.test: john@doe.test, jane@doe.test\nteam@doe.test: jane@doe.test, friend@remote.test\n"), 0o600))
		require.NoError(t, tab.Reload())
		errs, err := sendTo(t, ts.addr, []string{"team@doe.test"}, "after")
		require.NoError(t, errs[0])
		require.NoError(t, err)
		got := ts.waitDelivered(t, 2)
		assert.Equal(t, "smtp", got["friend@remote.test"].Route.Transport)
		assert.Equal(t, "jane", got["jane@doe.test"].Route.Target)
	})
}

func findRcpt(got map[string]policy.Delivery, addr string) policy.Recipient {
	d, ok := got[addr]
	if !ok {
		return policy.Recipient{}
	}
	for _, r := range d.Rcpts {
		if r.Addr.String() == addr {
			return r
		}
	}
	return policy.Recipient{}
}
