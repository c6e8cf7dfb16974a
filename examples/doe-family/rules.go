package main

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/delegate"
	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/relay"
)

// ruleSet is what the rules of doe-family depend on.
type ruleSet struct {
	domains   []string
	internal  []netip.Prefix
	resolver  policy.Resolver
	hostname  string
	antivirus *delegate.Service // nil: no antivirus
	signer    *auth.DKIMSigner  // nil: no signing
	dkim      *dkimKey          // when set, signs instead of signer: a key SIGHUP reloads (reload.go)
	rcpts     *relay.RecipientTable
	abuse     *abuse           // nil: none (see rules_abuse.go)
	milters   []*milter.Milter // in order (see rules_milter.go)
}

// chain is the policy of doe-family: vSMTP's hardening guide as Go rules.
func (rs ruleSet) chain(log *slog.Logger) *policy.Chain {
	chain := &policy.Chain{Logger: log}
	// Built once: the rules below ask per message and per recipient.
	local := relay.NewDomains(rs.domains...)
	rs.milterFirst(chain)    // rules_milter.go: the milters' preq and discard rules
	rs.recipientRules(chain) // rules_rcpt.go: known recipients, aliases, sender ownership

	// Anti-abuse (rules_abuse.go): DNSBL, rate limits, HELO checks,
	// greylisting; after the recipient table (an unknown user gets its 550
	// before any greylisting), before everything else.
	rs.abuse.register(chain)

	// SPF on incoming mail, both identities (HELO first), soft mode: a
	// "fail" is refused with 550 5.7.23, everything else recorded in a
	// Received-SPF field. Authenticated (roaming) users are skipped: their
	// SPF result is not held against them.
	chain.Mail("spf", auth.CheckSPF(auth.SPFOptions{Identity: auth.SPFBoth, Mode: auth.SPFSoft, Resolver: rs.resolver, Receiver: rs.hostname}))

	// The milters' connect, helo, mail and rcpt rules: after ours, before
	// the relay rule's Accept ends the rcpt stage (rules_milter.go).
	rs.milterEnvelope(chain)

	// No open relay: from outside, only local recipients, unless the client
	// authenticated as a local account; the internal networks may send
	// anywhere. An account outside the local domains never relays.
	chain.Rcpt("relay", relay.CheckRelay(rs.internal, rs.domains...))

	// Antivirus: hand the message to clamsmtpd and look at what comes back.
	// A sender's own X-Virus-Infected field is removed first, so only the
	// filter's verdict counts.
	if rs.antivirus != nil {
		chain.PreQ("strip-av-fields", policy.MessageAction(func(ctx context.Context, tx *policy.Transaction, m *policy.Message) {
			m.Header.Del("X-Virus-Infected")
		}))
		chain.PreQ("antivirus", delegate.Rule(rs.antivirus, func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
			if m.Header.Has("X-Virus-Infected") {
				return policy.QuarantineBecause("virus_q", "X-Virus-Infected: "+m.Header.Get("X-Virus-Infected"))
			}
			return policy.Next()
		}))
	}

	// DKIM after queueing: sign what local senders send, verify the rest.
	verify := auth.DKIMVerifyOptions{Resolver: rs.resolver, AuthServID: rs.hostname}
	if rs.dkim != nil {
		chain.PostQ("dkim", rs.dkim.rule(verify, rs.domains))
	} else if rs.signer != nil {
		chain.PostQ("dkim", auth.SignOrVerifyDKIM(rs.signer, verify, rs.domains...))
	} else {
		chain.PostQ("dkim", auth.VerifyDKIM(verify))
	}

	// DMARC on incoming mail, after the DKIM results are in. This runs after
	// the 250, where refusing would mean bouncing to a sender who is likely
	// forged (backscatter): a message failing under p=reject or
	// p=quarantine is quarantined in "dmarc" instead.
	chain.PostQ("dmarc", skipOutgoing(rs, local, auth.CheckDMARC(auth.DMARCOptions{
		Resolver:   rs.resolver,
		AuthServID: rs.hostname,
		Decide: func(ctx context.Context, tx *policy.Transaction, r auth.DMARCResult) policy.Verdict {
			if r.Result == authres.ResultFail && r.Disposition != dmarc.PolicyNone {
				return policy.QuarantineBecause("dmarc", "DMARC "+string(r.Result)+" for "+r.FromDomain+" (policy "+string(r.Disposition)+")")
			}
			return policy.Next()
		},
	})))

	// Delivery: local recipients to their maildir, the rest out by SMTP.
	chain.Delivery("route", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		if local.Has(rcpt.Addr) {
			*route = policy.Route{Transport: "maildir"}
		} else {
			*route = policy.Route{Transport: "smtp"}
		}
		return policy.Accept()
	})
	return chain
}

// skipOutgoing runs rule only on incoming mail: not for authenticated
// clients, the internal networks, local senders (whose mail we sign), or
// the DSNs our queue generates (signed too, and with no SPF or DKIM
// results of their own: DMARC would fail them).
func skipOutgoing(rs ruleSet, local relay.Domains, rule policy.MessageRule) policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if _, ok := queue.GeneratedKey.Get(tx); ok {
			return policy.Next()
		}
		c := tx.Conn
		if c != nil && (c.Authenticated() || relay.InNetworks(c.Remote.Addr(), rs.internal)) {
			return policy.Next()
		}
		if local.Has(tx.From) {
			return policy.Next()
		}
		return rule(ctx, tx, m)
	}
}
