package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
)

// largeMessageRSSBound is issue 8's memory target: a 50 MiB message
// through the full policy grows the server's RSS by less than this.
const largeMessageRSSBound = 4 << 20

// rsaKeyFile writes a fresh RSA 2048 key (the common DKIM key) and
// returns its path and signer for domain.
func rsaKeyFile(t *testing.T, domain, selector string) (string, *auth.DKIMSigner) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), domain+".pem")
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600))
	s, err := auth.NewDKIMSigner(domain, selector, k)
	require.NoError(t, err)
	return path, s
}

// signedBigMessage writes bigMessage to a file, signs it with signer and
// returns the file holding the signed message.
func signedBigMessage(t *testing.T, signer *auth.DKIMSigner, from string, to []string, subject string, size int64) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "unsigned.eml"))
	require.NoError(t, err)
	defer f.Close()
	n, err := io.Copy(f, bigMessage(from, to, subject, size))
	require.NoError(t, err)
	m, err := policy.NewMessage(f, n, nil)
	require.NoError(t, err)
	sig, err := signer.Sign(context.Background(), m)
	require.NoError(t, err)
	m.Header.AddRaw(sig)
	out, err := os.Create(filepath.Join(dir, "signed.eml"))
	require.NoError(t, err)
	defer out.Close()
	_, err = m.WriteTo(out)
	require.NoError(t, err)
	return out.Name()
}

// TestLargeMessageMemory sends a 50 MiB message through doe-family as
// compare.sh runs it (MTA port, relay control with an internal network,
// SPF against the DNS server on loopback, DKIM with an RSA key, durable
// queue, maildir delivery) and checks the server's peak RSS grows by
// less than 4 MiB while it is received, queued, signed or verified, and
// delivered. Three cases tell the parts apart: a local sender (signed),
// an outside sender with a DKIM signature (verified), an outside sender
// without one (DKIM reads no body). Each runs in a fresh server after a
// small message has warmed its paths.
func TestLargeMessageMemory(t *testing.T) {
	skipShort(t)
	const size = 50 << 20
	_, outsideSigner := rsaKeyFile(t, "example.org", "big")
	cases := []struct {
		name, from string
		msg        func(t *testing.T, from string, to []string) io.Reader
	}{
		{"local sender, signed", "john@doe-family.com", nil},
		{"outside sender, verified", "someone@example.org", func(t *testing.T, from string, to []string) io.Reader {
			f, err := os.Open(signedBigMessage(t, outsideSigner, from, to, "big-verify", size))
			require.NoError(t, err)
			t.Cleanup(func() { f.Close() })
			return f
		}},
		{"outside sender, unsigned", "someone@example.org", nil},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			keyFile, signer := rsaKeyFile(t, "doe-family.com", "2022-09")
			e := hardenEnv(t, "-internal", "127.0.0.0/8", "-max-message-size", fmt.Sprint(60<<20), "-dkim-key", keyFile, "-log-level", "warn")
			e.dns.Remove(dns(signer.DNSName()), 16) // TXT: the Ed25519 key of newEnv
			e.dns.Add(fmt.Sprintf(`%s TXT "%s"`, dns(signer.DNSName()), signer.DNSRecord()))
			e.dns.Add(fmt.Sprintf(`%s TXT "%s"`, dns(outsideSigner.DNSName()), outsideSigner.DNSRecord()))
			pid := e.cmd.Process.Pid
			jane := filepath.Join(e.maildir, "jane", "new")
			to := []string{"jane@doe-family.com"}
			subject := fmt.Sprintf("big-%d", i)

			// Warm up the path with a small message.
			require.NoError(t, sendFrom("127.0.0.1", e.listen, tc.from, to, message(tc.from, to[0], "warmup", "small")))
			waitFor(t, 20*time.Second, "warm-up delivery", func() bool { return countFiles(jane) == 1 })

			body := bigMessage(tc.from, to, subject, size)
			if tc.msg != nil {
				body = tc.msg(t, tc.from, to)
				subject = "big-verify"
			}
			m := startPeakMeter(t, pid)
			require.NoError(t, sendRaw("127.0.0.1", e.listen, tc.from, to, body))
			_, _, recvGrowth := m.sample()
			waitFor(t, 60*time.Second, "the large message in the maildir", func() bool { return countFiles(jane) == 2 })
			base, peak, growth := m.finish()
			t.Logf("%s, 50 MiB: RSS %s before, peak %s, growth %s (%s when the 250 came; exact peak: %v)",
				tc.name, mib(base), mib(peak), mib(growth), mib(recvGrowth), m.reset)
			assert.Less(t, growth, int64(largeMessageRSSBound), "RSS grew by %s", mib(growth))

			delivered := readNewest(t, jane)
			assert.Contains(t, delivered, "Subject: "+subject)
			switch {
			case strings.HasPrefix(tc.name, "local"):
				assert.Contains(t, delivered, "DKIM-Signature:", "a local sender's message is signed")
			case tc.msg != nil:
				assert.Regexp(t, `dkim=pass[^;]*header\.d=example\.org`, delivered, "the outside signature verifies")
			default:
				assert.Contains(t, delivered, "dkim=none")
			}
		})
	}
}

// sendRaw runs one transaction on the MTA port from ip with the message
// read from body.
func sendRaw(ip, addr, from string, to []string, body io.Reader) error {
	conn, err := dialFrom(ip, addr)
	if err != nil {
		return err
	}
	c := gosmtp.NewClient(conn)
	c.CommandTimeout = 60 * time.Second
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	if err := transact(c, from, to, body); err != nil {
		return err
	}
	return c.Quit()
}

// readNewest returns the header block of the newest message in dir (the
// body of a large one is not needed).
func readNewest(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var newest string
	var at time.Time
	for _, en := range entries {
		info, err := en.Info()
		require.NoError(t, err)
		if info.ModTime().After(at) {
			newest, at = en.Name(), info.ModTime()
		}
	}
	f, err := os.Open(filepath.Join(dir, newest))
	require.NoError(t, err)
	defer f.Close()
	head := make([]byte, 16<<10)
	n, _ := io.ReadFull(f, head)
	if i := bytes.Index(head[:n], []byte("\n\n")); i >= 0 {
		n = i
	}
	return string(head[:n])
}
