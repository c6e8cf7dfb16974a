package policy_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// A chain with a rule at mail, a relay rule at rcpt and a content rule at
// preq, evaluated stage by stage as the smtp package does.
func ExampleChain() {
	chain := policy.NewChain()
	chain.Mail("no-null-sender-from-outside", func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		if tx.From.IsNull() && !tx.Conn.Remote.Addr().IsPrivate() {
			return policy.Deny(550, "5.7.1", "Bounces are not accepted here")
		}
		return policy.Info(250, "2.1.0", "Sender OK")
	})
	chain.Rcpt("local-domains", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		if r.Addr.Domain == "example.com" {
			return policy.Accept()
		}
		return policy.Next() // no rule accepts: the default denies
	})
	chain.PreQ("no-exe", func(_ context.Context, _ *policy.Transaction, m *policy.Message) policy.Verdict {
		if strings.Contains(m.Header.Get("Content-Type"), ".exe") {
			return policy.Deny(554, "5.7.1", "Executables are not accepted")
		}
		m.Header.Add("X-Checked", "no-exe")
		return policy.Next()
	})

	ctx := context.Background()
	conn := &policy.Conn{ID: "c1"}
	tx := policy.NewTransaction(conn, "q1")
	tx.From = policy.MustParseAddress("<alice@example.org>")
	fmt.Println("MAIL:", chain.EvalMail(ctx, tx).Reply)

	for _, to := range []string{"bob@EXAMPLE.com", "eve@elsewhere.example"} {
		rcpt := policy.Recipient{Addr: policy.MustParseAddress(to)}
		r := chain.EvalRcpt(ctx, tx, rcpt)
		if r.Accepted() {
			tx.Rcpts = append(tx.Rcpts, rcpt)
		}
		fmt.Printf("RCPT %s: %s (rule %s)\n", rcpt.Addr, r.Reply, r.Rule)
	}

	raw := "Subject: hi\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\r\nMZ...\r\n"
	m, _ := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	fmt.Println("DATA:", chain.EvalPreQ(ctx, tx, m).Reply)
	// Output:
	// MAIL: 250 2.1.0 Sender OK
	// RCPT bob@example.com: 250 2.1.5 Recipient OK (rule local-domains)
	// RCPT eve@elsewhere.example: 554 5.7.1 Relay access denied (rule (default))
	// DATA: 554 5.7.1 Executables are not accepted
}

// Addresses are parsed once; the local part is re-quoted when printed.
func ExampleParseAddress() {
	for _, s := range []string{"<User@BÜCHER.example.>", "a@b@example.com", "<>"} {
		a, err := policy.ParseAddress(s)
		fmt.Printf("%q -> local %q domain %q path %s err %v\n", s, a.Local, a.Domain, a.Path(), err)
	}
	// Output:
	// "<User@BÜCHER.example.>" -> local "User" domain "xn--bcher-kva.example" path <User@xn--bcher-kva.example> err <nil>
	// "a@b@example.com" -> local "a@b" domain "example.com" path <"a@b"@example.com> err <nil>
	// "<>" -> local "" domain "" path <> err <nil>
}
