package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dkimpy returns a python3 that can import dkimpy (Debian: python3-dkim),
// or skips the test; with MTAKIT_INTEGRATION=1 a missing dkimpy fails it.
func dkimpy(t *testing.T) string {
	t.Helper()
	for _, py := range []string{os.Getenv("MTAKIT_PYTHON"), "/usr/bin/python3", "python3"} {
		if py == "" {
			continue
		}
		p, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		if exec.Command(p, "-c", "import dkim").Run() == nil {
			return p
		}
	}
	msg := "python3-dkim (dkimpy) is not installed (apt-get install python3-dkim); it is the independent DKIM verifier"
	if os.Getenv("MTAKIT_INTEGRATION") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + "; set MTAKIT_INTEGRATION=1 to make this a failure")
	return ""
}

func runDkimpy(t *testing.T, py string, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(py, append([]string{filepath.Join("testdata", "dkim", "dkimpy.py")}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if errb.Len() > 0 {
		t.Logf("dkimpy stderr: %s", errb.String())
	}
	return out.String(), err
}

// TestDKIMInteropOurSignaturesVerifyWithDkimpy signs with our rule and has
// dkimpy verify, given the key record through a file (no DNS).
func TestDKIMInteropOurSignaturesVerifyWithDkimpy(t *testing.T) {
	py := dkimpy(t)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{
		{"rsa", testRSA(t)},
		{"ed25519", testEd25519()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer := newTestSigner(t, "example.com", tc.key)
			txt := filepath.Join(t.TempDir(), "key.txt")
			require.NoError(t, os.WriteFile(txt, []byte(signer.DNSRecord()), 0o600))

			// A header with folding and odd spacing exercises relaxed
			// canonicalization on both sides.
			raw := "From:   Alice  <alice@example.com>\r\n" +
				"To: bob@example.org,\r\n\tcarol@example.org\r\n" +
				"Subject:  Folded\r\n  subject line\r\n" +
				sampleMessage[strings.Index(sampleMessage, "Date:"):]
			m := newTestMessage(t, raw)
			require.Equal(t, policy.Next(), SignDKIM(signer)(context.Background(), newTestTx("alice@example.com"), m))
			signed := messageString(t, m)

			out, err := runDkimpy(t, py, signed, "verify", txt)
			assert.NoError(t, err)
			assert.Equal(t, "pass\n", out)

			// dkimpy sees the one-byte change too.
			out, err = runDkimpy(t, py, strings.Replace(signed, "test with", "test wiTh", 1), "verify", txt)
			assert.Error(t, err)
			assert.Equal(t, "fail\n", out)
		})
	}
}

// TestDKIMInteropDkimpySignaturesVerifyWithUs has dkimpy sign and our rule
// verify against the key served by a DNS server on loopback.
func TestDKIMInteropDkimpySignaturesVerifyWithUs(t *testing.T) {
	py := dkimpy(t)
	dir := t.TempDir()
	rsaPath := filepath.Join(dir, "rsa.pem")
	require.NoError(t, os.WriteFile(rsaPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(testRSA(t))}), 0o600))
	edPath := filepath.Join(dir, "ed.key")
	require.NoError(t, os.WriteFile(edPath, []byte(base64.StdEncoding.EncodeToString(testEd25519().Seed())), 0o600))

	for _, tc := range []struct {
		name, algo, keyPath string
		key                 crypto.Signer
	}{
		{"rsa", "rsa-sha256", rsaPath, testRSA(t)},
		{"ed25519", "ed25519-sha256", edPath, testEd25519()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer := newTestSigner(t, "example.com", tc.key) // for its DNS record
			srv := dkimZone(t, signer)
			signed, err := runDkimpy(t, py, sampleMessage, "sign", "sel1", "example.com", tc.keyPath, tc.algo)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(signed, "DKIM-Signature:"), signed)

			verify := func(raw string) DKIMResult {
				tx := newTestTx("alice@example.com")
				v := VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(context.Background(), tx, newTestMessage(t, raw))
				require.Equal(t, policy.Next(), v)
				res, _ := DKIMResultsKey.Get(tx)
				require.Len(t, res, 1)
				return res[0]
			}
			r := verify(signed)
			assert.Equal(t, authres.ResultValue(authres.ResultPass), r.Result, "%v", r.Reason)
			assert.Equal(t, tc.algo, r.Algorithm)
			assert.Equal(t, "example.com", r.Domain)

			r = verify(strings.Replace(signed, "Hello Bob", "Hello Bib", 1))
			assert.Equal(t, authres.ResultValue(authres.ResultFail), r.Result)
		})
	}
}
