package delegate_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/mtakit/mtakit/delegate"
	"github.com/mtakit/mtakit/policy"
)

// A chain that sends every message through clamsmtpd before queueing it,
// and quarantines what clamd found infected. clamsmtpd runs with
// "Listen: 127.0.0.1:10026", "OutAddress: 127.0.0.1:10024" and
// "Action: pass" (see testdata/clamav-env.sh).
func ExampleRule() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	clamsmtpd := &delegate.Service{
		Name:          "clamsmtpd",
		Filter:        "127.0.0.1:10026",
		Receiver:      "127.0.0.1:10024",
		Timeout:       2 * time.Minute,
		MaxConcurrent: 32, // below clamsmtpd's MaxConnections
	}
	go func() {
		if err := clamsmtpd.ListenAndServe(ctx); err != nil {
			log.Fatal(err)
		}
	}()

	chain := policy.NewChain()
	chain.PreQ("antivirus", delegate.Rule(clamsmtpd, func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if m.Header.Has("X-Virus-Infected") {
			return policy.Quarantine("virus_q")
		}
		return policy.Next()
	}))
	// ... hand chain to the smtp server.
}

// Scanning with clamd directly, without clamsmtpd.
func ExampleClamAV() {
	clam := &delegate.ClamAV{Network: "unix", Address: "/run/clamav/clamd.ctl", Timeout: time.Minute}

	// As a rule: infected mail goes to quarantine, clamd errors give 451.
	chain := policy.NewChain()
	chain.PreQ("clamav", delegate.ClamAVRule(clam, "virus_q"))

	// Or by hand.
	virus, err := clam.Scan(context.Background(), strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	switch {
	case err != nil:
		fmt.Println("not scanned:", err)
	case virus != "":
		fmt.Println("infected:", virus)
	default:
		fmt.Println("clean")
	}
}
