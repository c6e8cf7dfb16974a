package delegate

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// requireTools skips the test when a real tool is missing, unless
// MTAKIT_INTEGRATION=1 (then it fails).
func requireTools(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := exec.LookPath(p); err != nil {
			msg := fmt.Sprintf("%s not installed (apt-get install -y clamav-daemon clamsmtp clamav; see delegate/testdata/README.md): %v", p, err)
			if os.Getenv("MTAKIT_INTEGRATION") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// realClamAV starts clamd and clamsmtpd with testdata/clamav-env.sh,
// clamsmtpd relaying to the receiver ln, and stops them at the end of the
// test. It returns the environment's directory and the ports.
//
// The ports come from freePort, which closes its listener: another test
// process (go test runs packages in parallel) can take one before clamd or
// clamsmtpd binds it. The script then fails saying so, and the start is
// tried again on fresh ports, at most three times.
func realClamAV(t *testing.T, receiver string) (dir string, clamdPort, smtpPort int) {
	t.Helper()
	requireTools(t, "bash", "/usr/sbin/clamd", "/usr/sbin/clamsmtpd")
	script, err := filepath.Abs("testdata/clamav-env.sh")
	require.NoError(t, err)
	dir = t.TempDir()
	clamEnv := func(clamdPort, smtpPort int) []string {
		return append(os.Environ(),
			"CLAMD_PORT="+strconv.Itoa(clamdPort),
			"CLAMSMTP_PORT="+strconv.Itoa(smtpPort),
			"CLAMSMTP_OUT="+receiver,
		)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		stop := exec.CommandContext(ctx, "bash", script, "stop", dir)
		stop.Env = clamEnv(clamdPort, smtpPort)
		if out, err := stop.CombinedOutput(); err != nil {
			t.Errorf("clamav-env.sh stop: %v\n%s", err, out)
		}
	})
	for attempt := 1; ; attempt++ {
		clamdPort, smtpPort = freePort(t), freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		start := exec.CommandContext(ctx, "bash", script, "start", dir)
		start.Env = clamEnv(clamdPort, smtpPort)
		out, err := start.CombinedOutput()
		cancel()
		if err == nil {
			t.Logf("%s", strings.TrimSpace(string(out)))
			return dir, clamdPort, smtpPort
		}
		portTaken := bytes.Contains(out, []byte("already in use")) || bytes.Contains(out, []byte("could not bind")) ||
			bytes.Contains(out, []byte("did not listen on"))
		require.True(t, portTaken && attempt < 3, "clamav-env.sh start: %v\n%s", err, out)
		t.Logf("clamav-env.sh start, attempt %d: a port was taken; trying new ports:\n%s", attempt, out)
	}
}

// TestIntegrationClamAV runs the delegation through the real clamsmtpd and
// clamd, and the INSTREAM scanner against the same clamd.
func TestIntegrationClamAV(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dir, clamdPort, smtpPort := realClamAV(t, ln.Addr().String())
	// clamav-env.sh sets clamsmtpd's MaxConnections to 16.
	svc := startService(t, ln, fmt.Sprintf("127.0.0.1:%d", smtpPort), 60*time.Second, func(s *Service) { s.MaxConcurrent = 8 })
	rule := Rule(svc, virusRule(nil))

	t.Run("delegation", func(t *testing.T) {
		tests := []struct {
			name      string
			body      string
			want      policy.Verdict
			wantField string
		}{
			{"clean", "Just a clean message.\r\n..dot-stuffed line", policy.Next(), "X-Virus-Scanned: ClamAV using ClamSMTP\r\n"},
			{"eicar", "Here it is:\r\n" + eicar, policy.Quarantine("virus_q"), "X-Virus-Infected: Virus Detected!\r\n"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				raw := rawMessage(tc.name, tc.body)
				m := newMessage(t, raw)
				v := rule(context.Background(), newTx(tc.name, "a@sender.example", "b@rcpt.example", "c@rcpt.example"), m)
				require.Equal(t, tc.want, v, "verdict %v: %v", v, v.Err)
				// clamsmtpd adds its field as the last header line and
				// changes nothing else.
				i := strings.Index(raw, "\r\n\r\n")
				assert.Equal(t, raw[:i+2]+tc.wantField+raw[i+2:], readAll(t, m))
			})
		}
	})

	t.Run("20 concurrent", func(t *testing.T) {
		const n = 20
		var wg sync.WaitGroup
		verdicts := make([]policy.Verdict, n)
		bodies := make([]string, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := fmt.Sprintf("concurrent message %d", i)
				if i%5 == 0 {
					body += "\r\n" + eicar
				}
				m := newMessage(t, rawMessage(fmt.Sprintf("subject %d", i), body))
				tx := newTx(fmt.Sprint(i), "a@sender.example", fmt.Sprintf("r%d@rcpt.example", i))
				verdicts[i] = rule(context.Background(), tx, m)
				bodies[i] = readAll(t, m)
			}()
		}
		wg.Wait()
		for i := range n {
			if i%5 == 0 {
				assert.Equal(t, policy.Quarantine("virus_q"), verdicts[i], "message %d: %v", i, verdicts[i].Err)
				assert.Contains(t, bodies[i], "X-Virus-Infected: Virus Detected!\r\n")
			} else {
				assert.Equal(t, policy.Next(), verdicts[i], "message %d: %v", i, verdicts[i].Err)
				assert.Contains(t, bodies[i], "X-Virus-Scanned: ClamAV using ClamSMTP\r\n")
			}
			assert.Contains(t, bodies[i], fmt.Sprintf("Subject: subject %d\r\n", i), "message %d came back to its own transaction", i)
			assert.Contains(t, bodies[i], fmt.Sprintf("concurrent message %d", i))
		}
	})

	t.Run("instream", func(t *testing.T) {
		for _, clam := range []*ClamAV{
			{Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", clamdPort), Timeout: 30 * time.Second},
			{Network: "unix", Address: filepath.Join(dir, "clamd.sock"), Timeout: 30 * time.Second},
		} {
			t.Run(clam.Network, func(t *testing.T) {
				ctx := context.Background()
				require.NoError(t, clam.Ping(ctx))
				ver, err := clam.Version(ctx)
				require.NoError(t, err)
				assert.True(t, strings.HasPrefix(ver, "ClamAV "), ver)

				virus, err := clam.Scan(ctx, strings.NewReader(rawMessage("eicar", eicar)))
				require.NoError(t, err)
				assert.Equal(t, "Eicar-Test-Signature.UNOFFICIAL", virus)
				virus, err = clam.Scan(ctx, strings.NewReader(rawMessage("clean", "nothing here")))
				require.NoError(t, err)
				assert.Empty(t, virus)

				tx := newTx("s", "a@sender.example", "b@rcpt.example")
				assert.Equal(t, policy.QuarantineBecause("virus_q", "virus: Eicar-Test-Signature.UNOFFICIAL"), ClamAVRule(clam, "virus_q")(ctx, tx, newMessage(t, rawMessage("eicar", eicar))))
				assert.Equal(t, policy.Next(), ClamAVRule(clam, "virus_q")(ctx, tx, newMessage(t, rawMessage("clean", "fine"))))
			})
		}
	})
}
