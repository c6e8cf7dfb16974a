package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/relay"
)

// The recipient table is what auth's sender-ownership rule asks.
var _ auth.SenderOwners = (*relay.RecipientTable)(nil)

// recipientsWatchInterval is how often the -users and -aliases files are
// checked for changes.
const recipientsWatchInterval = 5 * time.Second

// loadRecipients builds the table of local recipients from -users (its
// addresses are the accounts) and -aliases. With neither the server is a
// catch-all for its domains, as it was before there was a table: it
// returns nil and says so in a warning.
func loadRecipients(cfg *config, log *slog.Logger) (*relay.RecipientTable, error) {
	if cfg.users == "" && cfg.aliases == "" {
		log.Warn("no -users and no -aliases: every local part of the local domains is accepted (catch-all)",
			slog.String("domains", strings.Join(cfg.domains, ",")))
		return nil, nil
	}
	t, err := relay.NewRecipientTable(relay.RecipientConfig{
		Domains:     cfg.domains,
		AccountFile: cfg.users,
		AliasFile:   cfg.aliases,
		Logger:      log,
	})
	if err != nil {
		if cfg.aliases != "" && strings.Contains(err.Error(), cfg.aliases) {
			return nil, fmt.Errorf("-aliases: %w", err)
		}
		return nil, fmt.Errorf("-users/-aliases: %w", err)
	}
	return t, nil
}

// recipientRules registers the rules of local recipients and sender
// ownership, each before the rules of its stage that rules.go registers:
//
//   - mail: an authenticated user sends only as an address they own (their
//     login, an alias that leads to them): 553 5.7.1 otherwise;
//   - rcpt: an unknown local recipient gets 550 5.1.1, before the relay
//     rule accepts the local domains;
//   - preq: the header From is held to the same ownership, and aliases
//     are expanded into the recipients before the message is queued;
//   - delivery: an account goes to its maildir (a subaddress and the case
//     of the local part do not make another one).
//
// Without a table (catch-all) only the ownership rules are registered:
// the login is then the only address a user owns.
func (rs ruleSet) recipientRules(chain *policy.Chain) {
	owners := auth.SenderLoginOptions{}
	if rs.rcpts != nil {
		owners.Owners = rs.rcpts
	}
	chain.Mail("sender-login", auth.CheckSenderLogin(owners))
	chain.PreQ("from-login", auth.CheckFromLogin(owners))
	if rs.rcpts == nil {
		return
	}
	chain.Rcpt("recipients", rs.rcpts.RcptRule())
	chain.PreQ("aliases", rs.rcpts.ExpandRule())
	chain.Delivery("mailbox", rs.rcpts.DeliveryRule())
}

// watchRecipients reloads the table when -users or -aliases change, until
// ctx ends.
func (s *server) watchRecipients(ctx context.Context) {
	if s.rcpts != nil {
		go s.rcpts.Watch(ctx, recipientsWatchInterval)
	}
}
