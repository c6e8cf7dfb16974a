package milterd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// EICAR is the anti-virus test file's 68 bytes; the clamd started by
// [ClamavMilter] knows it as Eicar-Test-Signature.UNOFFICIAL.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// ClamavMilterConfig configures [ClamavMilter].
type ClamavMilterConfig struct {
	// OnInfected is clamav-milter's OnInfected: "Reject" (the default
	// here), "Quarantine", "Blackhole" (accept and drop) or "Accept".
	OnInfected string
	// RejectMsg is the reply text for a rejected message ("%v" is the
	// virus name). Empty: clamav-milter's own.
	RejectMsg string
	// Extra is appended to the configuration file (one option a line).
	Extra string
}

// clamavMilterConf: AddHeader Replace adds X-Virus-Scanned and
// X-Virus-Status to every message scanned; ReportHostname fixes the host
// name in them.
const clamavMilterConf = `# Written by internal/milterd for one test.
MilterSocket inet:{{port}}@127.0.0.1
Foreground yes
PidFile {{dir}}/clamav-milter.pid
ClamdSocket tcp:127.0.0.1:{{clamd}}
TemporaryDirectory {{dir}}
OnClean Accept
OnInfected {{oninfected}}
OnFail Defer
AddHeader Replace
ReportHostname clamav.test
LogFile {{dir}}/clamav-milter.log
LogTime yes
LogVerbose yes
LogInfected Full
LogClean Basic
ReadTimeout 60
`

// ClamavMilter starts clamd with the EICAR-only database of
// delegate/testdata/clamav-env.sh (CLAMSMTPD=no: clamd alone), and
// clamav-milter (Debian package clamav-milter) in front of it on a free
// port of 127.0.0.1; both are stopped at the end of the test. It skips the
// test when they are not installed, unless MTAKIT_INTEGRATION=1.
func ClamavMilter(tb testing.TB, cfg ClamavMilterConfig) *Daemon {
	tb.Helper()
	bin := requireTool(tb, "/usr/sbin/clamav-milter", "clamav-milter")
	requireTool(tb, "/usr/sbin/clamd", "clamav-daemon")
	requireTool(tb, "bash", "bash")
	if cfg.OnInfected == "" {
		cfg.OnInfected = "Reject"
	}
	d := start(tb, "clamav-milter", func() (*Daemon, error) { return startClamavMilter(tb, bin, cfg) })
	logOnFailure(tb, d, filepath.Join(d.Dir, "clamav-milter.log"), filepath.Join(d.Dir, "clamav", "clamd.log"))
	return d
}

func startClamavMilter(tb testing.TB, bin string, cfg ClamavMilterConfig) (*Daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Daemon{Name: "clamav-milter", Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", port),
		Dir: privateDir(tb, "clamav-milter"), killAtStop: true}
	fail := func(err error) (*Daemon, error) { d.Stop(); return nil, err }

	clamdPort, err := freePort()
	if err != nil {
		return fail(err)
	}
	script := filepath.Join(sourceDir(), "..", "..", "delegate", "testdata", "clamav-env.sh")
	clamDir := filepath.Join(d.Dir, "clamav")
	env := append(os.Environ(), "CLAMSMTPD=no", "CLAMD_PORT="+strconv.Itoa(clamdPort))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout+30*time.Second)
	defer cancel()
	start := exec.CommandContext(ctx, "bash", script, "start", clamDir)
	start.Env = env
	out, err := start.CombinedOutput()
	// Stop clamd after clamav-milter, whatever happened.
	d.extra = append(d.extra, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stop := exec.CommandContext(ctx, "bash", script, "stop", clamDir)
		stop.Env = env
		_ = stop.Run()
	})
	if err != nil {
		if bytes.Contains(out, []byte("already in use")) || bytes.Contains(out, []byte("could not bind")) {
			return fail(fmt.Errorf("%w: clamav-env.sh start: %v\n%s", errPortTaken, err, out))
		}
		return fail(fmt.Errorf("clamav-env.sh start: %v\n%s", err, out))
	}

	conf := strings.NewReplacer("{{dir}}", d.Dir, "{{port}}", strconv.Itoa(port), "{{clamd}}", strconv.Itoa(clamdPort),
		"{{oninfected}}", cfg.OnInfected).Replace(clamavMilterConf)
	if cfg.RejectMsg != "" {
		conf += "RejectMsg " + cfg.RejectMsg + "\n"
	}
	conf += cfg.Extra + "\n"
	confFile := filepath.Join(d.Dir, "clamav-milter.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return fail(err)
	}
	err = d.start([]string{bin, "--config-file=" + confFile}, nil, func(ctx context.Context) error {
		// clamav-milter serves its socket while it still probes clamd;
		// a message arriving before the probe succeeded is answered
		// 451 ("Failed to initiate streaming/fdpassing" in its log).
		if err := waitFileLine(ctx, filepath.Join(d.Dir, "clamav-milter.log"), "Probe for slot 1 returned: success"); err != nil {
			return err
		}
		return waitAccept(ctx, d.Address)
	})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(d.Dir, "clamav-milter.log"))
		all := d.out.String() + string(log)
		if strings.Contains(all, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		d.Stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(all, 30))
	}
	return d, nil
}
