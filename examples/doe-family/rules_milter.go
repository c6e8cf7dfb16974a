package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/policy"
)

// Milters (-milter, -milter-default-action): rspamd, OpenDKIM,
// clamav-milter... as Postfix's smtpd_milters, in the order given.
//
// Where their rules go in the chain:
//   - connect, helo, mail, rcpt: after our own rules of those stages (the
//     DNSBL, rate limits, unknown users, greylisting, SPF), so that a
//     milter sees only what we would accept, as Postfix sends a milter
//     only what its restrictions let through; but before the relay rule,
//     whose Accept ends the rcpt stage;
//   - preq: first, before the alias expansion (a recipient the milter
//     adds is expanded, one it deletes is the one it was sent), the
//     sender ownership check and the antivirus, which see the message as
//     the milters left it;
//   - DKIM signing is at postq, after the 250: it signs the header fields
//     the milters added;
//   - delivery: the discard rule first, before the routing rules accept.

// parseMilters reads the -milter list: addresses separated by commas.
func parseMilters(list string) ([]milter.Addr, error) {
	var out []milter.Addr
	seen := map[milter.Addr]bool{}
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := milter.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		if seen[a] {
			return nil, fmt.Errorf("%s given twice", a)
		}
		seen[a] = true
		out = append(out, a)
	}
	return out, nil
}

// newMilters makes the milters of the command line.
func newMilters(cfg *config, log *slog.Logger) ([]*milter.Milter, error) {
	addrs, err := parseMilters(cfg.milters)
	if err != nil {
		return nil, fmt.Errorf("-milter: %w", err)
	}
	action, err := milter.ParseDefaultAction(cfg.milterDefault)
	if err != nil {
		return nil, fmt.Errorf("-milter-default-action: %w", err)
	}
	var ms []*milter.Milter
	for _, a := range addrs {
		m, err := milter.New(milter.Options{
			Addr:          a.String(),
			DefaultAction: action,
			Hostname:      cfg.hostname,
			DaemonName:    "doe-family",
			Logger:        log,
		})
		if err != nil {
			return nil, fmt.Errorf("-milter: %w", err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// milterFirst registers what the milters need before our own rules: the
// preq rules and the discard rule.
func (rs ruleSet) milterFirst(chain *policy.Chain) {
	if len(rs.milters) == 0 {
		return
	}
	chain.Delivery(milter.DiscardRuleName, milter.DiscardRule())
	for _, m := range rs.milters {
		chain.PreQ("milter:"+m.Name()+":preq", m.MessageRule())
	}
}

// milterEnvelope registers the milters' rules of the stages before DATA.
func (rs ruleSet) milterEnvelope(chain *policy.Chain) {
	for _, m := range rs.milters {
		n := "milter:" + m.Name()
		chain.Connect(n+":connect", m.ConnectRule())
		chain.Helo(n+":helo", m.HeloRule())
		chain.Mail(n+":mail", m.MailRule())
		chain.Rcpt(n+":rcpt", m.RcptRule())
	}
}
