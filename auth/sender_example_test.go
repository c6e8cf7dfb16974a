package auth_test

import (
	"context"
	"fmt"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

// family grants family@example.com to john and jane; a
// relay.RecipientTable does the same from its aliases.
type family struct{}

func (family) Owns(login string, addr policy.Address) bool {
	return addr.String() == "family@example.com" && (login == "john@example.com" || login == "jane@example.com")
}

func ExampleCheckSenderLogin() {
	opts := auth.SenderLoginOptions{Owners: family{}}
	chain := &policy.Chain{}
	chain.Mail("sender-login", auth.CheckSenderLogin(opts))
	chain.PreQ("from-login", auth.CheckFromLogin(opts))

	for _, from := range []string{"john@example.com", "family@example.com", "jane@example.com", ""} {
		o, _ := policytest.Run(context.Background(), chain, policytest.Session{
			Listener: "submission", AuthUser: "john@example.com", From: from, Rcpts: []string{"x@example.org"},
		})
		if o.Mail.Accepted() {
			fmt.Printf("<%s> accepted\n", from)
		} else {
			fmt.Printf("<%s> %v\n", from, o.Mail.Reply)
		}
	}
	// Output:
	// <john@example.com> accepted
	// <family@example.com> accepted
	// <jane@example.com> 553 5.7.1 <jane@example.com>: Sender address rejected: not owned by user john@example.com
	// <> accepted
}
