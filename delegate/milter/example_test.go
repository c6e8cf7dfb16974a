package milter_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/policy"
)

// Example puts rspamd (its proxy worker in milter mode) and OpenDKIM in
// front of a chain's own rules, as Postfix's smtpd_milters would.
func Example() {
	rspamd, err := milter.New(milter.Options{
		Name:          "rspamd",
		Addr:          "inet:127.0.0.1:11332",
		DefaultAction: milter.Tempfail, // rspamd down: 451, never unscanned mail
		EOMTimeout:    2 * time.Minute,
		Logger:        slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer rspamd.Close()
	opendkim, err := milter.New(milter.Options{
		Name:          "opendkim",
		Addr:          "unix:/run/opendkim/opendkim.sock",
		DefaultAction: milter.Accept, // unsigned mail rather than none
	})
	if err != nil {
		log.Fatal(err)
	}
	defer opendkim.Close()

	chain := &policy.Chain{RuleTimeout: 2 * time.Minute} // room for EOMTimeout
	// First: the milters' rcpt rules must run before the relay rule's
	// Accept ends the stage, and the rules below see what they changed.
	milter.Register(chain, rspamd, opendkim)
	chain.PreQ("spam-flag", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if m.Header.Get("X-Spam") == "Yes" { // rspamd's add_header action
			return policy.Quarantine("spam")
		}
		return policy.Next()
	})
	fmt.Println(chain.Rules(policy.StagePreQ))
	// Output: [milter:rspamd:preq milter:opendkim:preq spam-flag]
}

func ExampleParseAddr() {
	for _, s := range []string{"inet:127.0.0.1:11332", "inet:8891@localhost", "unix:/run/opendkim/opendkim.sock", "127.0.0.1:11332"} {
		a, err := milter.ParseAddr(s)
		fmt.Println(a.Network, a.Address, err != nil)
	}
	// Output:
	// tcp 127.0.0.1:11332 false
	// tcp localhost:8891 false
	// unix /run/opendkim/opendkim.sock false
	//   true
}
