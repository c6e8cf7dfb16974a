package relay

import (
	"context"
	"fmt"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// RcptRule returns the rcpt rule of the table: a recipient of a local
// domain (or a bare "postmaster") that the table does not know is refused
// with 550 5.1.1, as Postfix does ("User unknown in virtual mailbox
// table"), so that mail for a mistyped or invented name is refused at
// once, never accepted and bounced later. A known local recipient, and a
// recipient of any other domain, gets Next: the relay rule registered
// after this one decides (it accepts local domains), and so do the rules
// between them. Register it before the relay rule, whose Accept ends the
// rcpt stage.
func (t *RecipientTable) RcptRule() policy.RcptRule {
	return func(_ context.Context, _ *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
		s := t.cur.Load()
		a := rcpt.Addr
		if a.Domain == "" && strings.EqualFold(a.Local, "postmaster") {
			return policy.Next()
		}
		if !s.domains.Has(a) {
			return policy.Next()
		}
		if _, _, ok := s.lookup(a, true); ok {
			return policy.Next()
		}
		return policy.Deny(550, "5.1.1", a.Path()+": Recipient address rejected: User unknown in virtual mailbox table")
	}
}

// ExpandRule returns the preq rule that expands aliases: each recipient of
// tx.Rcpts that is an alias (postmaster and abuse included, and any local
// part a catch-all takes) is replaced by its targets, recursively, before
// the message is queued. This is where Postfix's cleanup applies
// virtual_alias_maps, and for the same reasons: the queue's envelope is
// built from tx.Rcpts, so each target is then delivered, retried and
// bounced on its own (a delivery rule can only route a recipient, not
// multiply it), and the postq and delivery rules see the real recipients.
//
// Each target keeps the NOTIFY of the recipient it came from, and its
// ORCPT (or "rfc822;" and the alias when the client gave none), so a DSN
// names the address the sender wrote. A target reached twice (two aliases
// sharing a member, or an alias and its member both given) is kept once.
// Accounts and remote addresses are kept as given, subaddress included.
//
// The table refuses alias cycles when it loads; an expansion deeper than
// RecipientConfig.MaxAliasDepth fails the message with 554 5.4.6 (routing
// loop), and one giving more than MaxExpansion recipients with 554 5.5.3,
// both at the end of DATA, so the sender learns at once.
//
// A ForceAccept before preq skips this rule like every filtering rule:
// DeliveryRule then defers the unexpanded aliases (451 4.3.0, logged).
func (t *RecipientTable) ExpandRule() policy.MessageRule {
	maxDepth, maxRcpts := t.cfg.MaxAliasDepth, t.cfg.MaxExpansion
	if maxDepth <= 0 {
		maxDepth = 16
	}
	if maxRcpts <= 0 {
		maxRcpts = 1000
	}
	return func(_ context.Context, tx *policy.Transaction, _ *policy.Message) policy.Verdict {
		s := t.cur.Load()
		var out []policy.Recipient
		seen := map[string]bool{}
		add := func(r policy.Recipient) {
			if k := foldAddr(r.Addr); !seen[k] {
				seen[k] = true
				out = append(out, r)
			}
		}
		changed := false
		for _, r := range tx.Rcpts {
			kind, key, ok := s.lookup(r.Addr, true)
			if !ok || kind != kindAlias {
				add(r)
				continue
			}
			changed = true
			orcpt := r.ORCPT
			if orcpt == "" {
				orcpt = "rfc822;" + r.Addr.String()
			}
			var walk func(key string, depth int) error
			walk = func(key string, depth int) error {
				if depth > maxDepth {
					return errLoop
				}
				for _, tg := range s.targets(key) {
					kind, next, ok := s.lookup(tg, true)
					if ok && kind == kindAlias {
						if err := walk(next, depth+1); err != nil {
							return err
						}
						continue
					}
					add(policy.Recipient{Addr: tg, Notify: r.Notify, ORCPT: orcpt})
					if len(out) > maxRcpts {
						return errTooMany
					}
				}
				return nil
			}
			switch err := walk(key, 1); err {
			case errLoop:
				return policy.Deny(554, "5.4.6", "Alias expansion of "+r.Addr.Path()+" is too deep (mail loop?)").WithErr(err)
			case errTooMany:
				return policy.Deny(554, "5.5.3", "Alias expansion of "+r.Addr.Path()+" gives too many recipients").WithErr(err)
			}
		}
		if changed || len(out) != len(tx.Rcpts) {
			tx.Rcpts = out
		}
		return policy.Next()
	}
}

type expandError string

func (e expandError) Error() string { return string(e) }

const (
	errLoop    expandError = "relay: alias expansion deeper than MaxAliasDepth"
	errTooMany expandError = "relay: alias expansion gives more than MaxExpansion recipients"
)

// DeliveryRule returns a delivery rule that routes an account of the
// table to RecipientConfig.LocalTransport ("maildir" by default) with its
// Mailbox as target, so "John+news@example.com" is delivered to john's
// mailbox. A recipient outside the local domains gets Next (register the
// outbound route after this rule). A local recipient the table no longer
// knows (removed since the message was accepted) fails with 550 5.1.1 and
// is bounced; an alias that ExpandRule did not expand is deferred (451
// 4.3.0) with the cause in the log.
func (t *RecipientTable) DeliveryRule() policy.DeliveryRule {
	transport := t.cfg.LocalTransport
	if transport == "" {
		transport = "maildir"
	}
	return func(_ context.Context, _ *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		s := t.cur.Load()
		a := rcpt.Addr
		if a.Domain == "" && strings.EqualFold(a.Local, "postmaster") {
			a.Domain = s.primary
		}
		if !s.domains.Has(a) {
			return policy.Next()
		}
		kind, key, ok := s.lookup(a, true)
		switch {
		case !ok:
			return policy.Deny(550, "5.1.1", a.Path()+": Recipient address rejected: User unknown in virtual mailbox table")
		case kind == kindAlias:
			return policy.Defer("4.3.0", "Alias not expanded").WithErr(fmt.Errorf("relay: %s is an alias that was not expanded before queueing: register RecipientTable.ExpandRule at preq", a))
		}
		*route = policy.Route{Transport: transport, Target: s.accountMailbox(key)}
		return policy.Accept()
	}
}
