package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestClusterBench measures, in one run on one machine, the accept rate
// of doe-family (the rate of 250s after DATA, with smtpload) with the
// filesystem spool, with an embedded single-node JetStream
// (-nats-embedded, R1, fsync at every write) and with a 3-node NATS
// cluster (R3, sync_interval always, three processes on this machine),
// for 4 KiB and 100 KiB messages over 8 and 64 connections, and prints
// the table with the ratios to the spool. Every server signs with DKIM
// and delivers to a maildir, as compare.sh's doe-family does; before each
// run the previous run's mail is delivered. It runs only with
// MTAKIT_BENCH=1 (a few minutes); MTAKIT_BENCH_N scales the message
// counts (default 1).
func TestClusterBench(t *testing.T) {
	if os.Getenv("MTAKIT_BENCH") != "1" {
		t.Skip("benchmark: set MTAKIT_BENCH=1 to run it")
	}
	scale := 1.0
	if s := os.Getenv("MTAKIT_BENCH_N"); s != "" {
		_, err := fmt.Sscan(s, &scale)
		require.NoError(t, err)
	}
	load := filepath.Join(t.TempDir(), "smtpload")
	out, err := exec.Command("go", "build", "-o", load, "../smtpload").CombinedOutput()
	require.NoError(t, err, "%s", out)

	// The load comes from 127.0.0.1, the one address doe-family.com's SPF
	// record names: the per-address connection limit is raised above 64.
	common := []string{"-internal", "127.0.0.0/8", "-rate-limit", "off", "-log-level", "warn", "-max-connections-per-ip", "200"}
	type mode struct {
		name string
		e    *env
	}
	var modes []mode
	modes = append(modes, mode{"spool", newEnv(t, common...)})
	modes = append(modes, mode{"js-embedded", newEnv(t, append(common, "-nats-embedded", t.TempDir(), "-node", "bench")...)})
	c := startNATSCluster(t, 3)
	modes = append(modes, mode{"js-cluster-R3", newEnv(t, append(common, "-queue", c.url(), "-node", "bench")...)})

	type result struct {
		Sent   int64   `json:"sent"`
		Failed int64   `json:"failed"`
		Rate   float64 `json:"msgs_per_s"`
		P99    float64 `json:"latency_p99_ms"`
		Errors map[string]int
	}
	accepted := map[string]int64{}
	run := func(m mode, size, conns, n int) result {
		// Deliver what the last run accepted first: delivery must not
		// eat into the next measurement.
		inbox := filepath.Join(m.e.maildir, "jane", "new")
		waitFor(t, 3*time.Minute, m.name+" delivered", func() bool { return int64(countFiles(inbox)) >= accepted[m.name] })
		cmd := exec.Command(load, "-addr", m.e.listen, "-size", fmt.Sprint(size), "-c", fmt.Sprint(conns), "-n", fmt.Sprint(n),
			"-duration", "30s", "-from", "load@doe-family.com", "-to", "jane@doe-family.com", "-helo", "load.doe-family.com", "-json")
		b, err := cmd.Output()
		require.NoError(t, err, "%s", b)
		var r result
		require.NoError(t, json.Unmarshal(b, &r), "%s", b)
		accepted[m.name] += r.Sent
		return r
	}
	for _, m := range modes {
		run(m, 4096, 8, 200) // warm-up
	}
	var rows []string
	rows = append(rows, fmt.Sprintf("| %7s | %5s | %-14s | %8s | %7s | %6s | %-12s |", "size", "conns", "queue", "msgs/s", "p99 ms", "failed", "ratio/spool"))
	rows = append(rows, "|---|---|---|---|---|---|---|")
	for _, size := range []int{4096, 102400} {
		for _, conns := range []int{8, 64} {
			n := int(2000 * scale)
			if size > 16384 {
				n = int(600 * scale)
			}
			var base float64
			for _, m := range modes {
				r := run(m, size, conns, n)
				if m.name == "spool" {
					base = r.Rate
				}
				ratio := "-"
				if base > 0 {
					ratio = fmt.Sprintf("%.2f", r.Rate/base)
				}
				rows = append(rows, fmt.Sprintf("| %7d | %5d | %-14s | %8.0f | %7.1f | %6d | %-12s |", size, conns, m.name, r.Rate, r.P99, r.Failed, ratio))
				if r.Failed > 0 {
					t.Logf("%s %d/%d errors: %v", m.name, size, conns, r.Errors)
				}
			}
		}
	}
	for _, m := range modes {
		inbox := filepath.Join(m.e.maildir, "jane", "new")
		waitFor(t, 3*time.Minute, m.name+" delivered", func() bool { return int64(countFiles(inbox)) >= accepted[m.name] })
	}
	t.Logf("accept rate, doe-family (DKIM signing, maildir delivery), %d CPUs, load generator on the same cores:\n%s", runtime.NumCPU(), strings.Join(rows, "\n"))
}
