package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

func ExampleRecipientTable() {
	dir, _ := os.MkdirTemp("", "aliases")
	defer os.RemoveAll(dir)
	aliases := filepath.Join(dir, "aliases")
	os.WriteFile(aliases, []byte("# the whole family\nfamily@example.com: john@example.com, jane@example.com\n"), 0o600)

	table, err := relay.NewRecipientTable(relay.RecipientConfig{
		Domains:   []string{"example.com"},
		Accounts:  []string{"john@example.com", "jane@example.com"},
		AliasFile: aliases, // read again by table.Reload or table.Watch
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	chain := &policy.Chain{}
	chain.Rcpt("recipients", table.RcptRule()) // before the relay rule
	chain.Rcpt("relay", relay.CheckRelay(nil, "example.com"))
	chain.PreQ("aliases", table.ExpandRule())
	chain.Delivery("local", table.DeliveryRule())

	o, _ := policytest.Run(context.Background(), chain, policytest.Session{
		From:  "friend@example.org",
		Rcpts: []string{"nobody@example.com", "family@example.com", "John+news@example.com"},
	})
	fmt.Println(o.Rcpts[0].Reply.Code, o.Rcpts[0].Reply.Enhanced)
	for _, d := range o.Delivery {
		fmt.Println(d.Rcpt.Addr, "->", d.Route.Transport, d.Route.Target)
	}
	// Output:
	// 550 5.1.1
	// john@example.com -> maildir john
	// jane@example.com -> maildir jane
	// John+news@example.com -> maildir john
}

func ExampleRecipientTable_Owns() {
	table, _ := relay.NewRecipientTable(relay.RecipientConfig{
		Domains:  []string{"example.com"},
		Accounts: []string{"john@example.com", "jane@example.com"},
		Aliases:  map[string][]string{"family@example.com": {"john@example.com", "jane@example.com"}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	for _, from := range []string{"john@example.com", "John+lists@example.com", "family@example.com", "jane@example.com"} {
		fmt.Println(from, table.Owns("john@example.com", policy.MustParseAddress(from)))
	}
	// Output:
	// john@example.com true
	// John+lists@example.com true
	// family@example.com true
	// jane@example.com false
}
