package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/relay"
)

// Defaults of the anti-abuse flags.
const (
	// defaultRateLimit is far above what a family sends or receives, and
	// above the load tests' 2,000 messages in a burst from one address:
	// a safety net against a runaway client or a broken-into account,
	// not a policy.
	defaultRateLimit = "msgs=5000/h,rcpts=20000/h,conns=3000/m"
	// defaultGreylistDelay is the -greylist-delay default.
	defaultGreylistDelay = 5 * time.Minute
)

// abuse holds the anti-abuse rules of doe-family: the -dnsbl, -rate-limit
// and -greylist flags, and HELO checks on the MTA port.
type abuse struct {
	internal []netip.Prefix
	names    []string           // our host name and domains, for the HELO check
	local    relay.Domains      // our domains
	dnsbl    *relay.DNSBL       // nil: no -dnsbl
	limiter  *relay.RateLimiter // nil: -rate-limit off
	greylist *relay.Greylist    // nil: no -greylist
	log      *slog.Logger
}

// newAbuse builds the anti-abuse rules from the command line. A flag that
// does not parse fails start-up, naming the flag.
//
// With a cluster (-queue, -nats-embedded) the rate limits and greylisting
// triplets are kept in its key-value buckets, shared by every node.
func newAbuse(cfg *config, internal []netip.Prefix, resolver policy.Resolver, cl *cluster, log *slog.Logger) (*abuse, error) {
	a := &abuse{internal: internal, names: append([]string{cfg.hostname}, cfg.domains...), local: relay.NewDomains(cfg.domains...), log: log}
	if cfg.dnsbl != "" {
		var zones []relay.DNSBLZone
		for _, s := range strings.Split(cfg.dnsbl, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			z, err := relay.ParseDNSBLZone(s)
			if err != nil {
				return nil, fmt.Errorf("-dnsbl: %w", err)
			}
			zones = append(zones, z)
		}
		var err error
		if a.dnsbl, err = relay.NewDNSBL(relay.DNSBLOptions{Zones: zones, Resolver: resolver, Internal: internal, Logger: log}); err != nil {
			return nil, fmt.Errorf("-dnsbl: %w", err)
		}
	}
	if cfg.rateLimit != "off" {
		limits, err := relay.ParseRateLimits(cfg.rateLimit)
		if err != nil {
			return nil, fmt.Errorf("-rate-limit: %w", err)
		}
		opts := relay.RateLimitOptions{Limits: limits, Internal: internal, Logger: log}
		if cl != nil {
			// Values matter for the longest period of a limit.
			ttl := time.Minute
			for _, r := range []relay.Rate{limits.Connections, limits.Messages, limits.Recipients} {
				ttl = max(ttl, r.Per)
			}
			store, err := cl.bucket("mtakit_ratelimit", ttl)
			if err != nil {
				return nil, fmt.Errorf("-rate-limit: %w", err)
			}
			opts.Store = store
		}
		if a.limiter, err = relay.NewRateLimiter(opts); err != nil {
			return nil, fmt.Errorf("-rate-limit: %w", err)
		}
	}
	if cfg.greylist {
		opts := relay.GreylistOptions{
			Dir:      filepath.Join(cfg.dataDir, "greylist"),
			Delay:    cfg.greylistDelay,
			Internal: internal,
			Skip:     greylistSkip,
			Logger:   log,
		}
		if cl != nil {
			// The default AllowFor, 36 days, is the longest a triplet matters.
			store, err := cl.bucket("mtakit_greylist", 36*24*time.Hour)
			if err != nil {
				return nil, fmt.Errorf("-greylist: %w", err)
			}
			opts.Dir, opts.Store = "", store
		}
		var err error
		a.greylist, err = relay.NewGreylist(opts)
		if err != nil {
			return nil, fmt.Errorf("-greylist: %w", err)
		}
	}
	return a, nil
}

// greylistSkip exempts from greylisting a sender whose SPF passed (a
// real server of its domain, which retries anyway) and a client an allow
// list lists.
func greylistSkip(_ context.Context, tx *policy.Transaction) bool {
	if r, ok := auth.SPFResultKey.Get(tx); ok && r.Result == auth.SPFPass {
		return true
	}
	r, ok := relay.DNSBLResultKey.Get(tx)
	return ok && r.Allowed
}

// register adds the anti-abuse rules to chain. Called first, so that in
// each stage they run before the rules that accept (relay), and at rcpt
// every recipient is counted.
func (a *abuse) register(chain *policy.Chain) {
	if a == nil {
		return
	}
	if a.dnsbl != nil {
		// Only the MTA port: the submission port serves family members on
		// dynamic addresses, which policy lists (Spamhaus PBL) list.
		connect := a.dnsbl.ConnectRule()
		chain.Connect("dnsbl", func(ctx context.Context, c *policy.Conn) policy.Verdict {
			if c.Listener != "mta" {
				return policy.Next()
			}
			return connect(ctx, c)
		})
		// Records the result (DNSBLResultKey) for the logs and greylisting;
		// a cached lookup after the connect stage's.
		chain.Mail("dnsbl-record", a.dnsbl.MailRule())
	}
	if a.limiter != nil {
		chain.Connect("rate-conns", a.limiter.ConnectRule())
		chain.Mail("rate-msgs", a.limiter.MailRule())
		chain.Rcpt("rate-rcpts", a.limiter.RcptRule())
	}
	// The machine itself (127.0.0.1, ::1) is not outside: swaks run on
	// the server, as in the README, says HELO with the machine's own name,
	// often a single label. Other loopback addresses stay checked (the
	// tests connect from them).
	heloInternal := append(slices.Clone(a.internal), netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128"))
	helo := relay.CheckHelo(relay.HeloOptions{Names: a.names, Internal: heloInternal})
	chain.Helo("helo-check", func(ctx context.Context, c *policy.Conn, name string) policy.Verdict {
		if c.Listener != "mta" {
			return policy.Next() // mail clients send what their OS calls the machine
		}
		return helo(ctx, c, name)
	})
	if a.greylist != nil {
		// Only mail for us: a relay attempt is refused by the relay rule
		// at once, not greylisted first.
		greylist := a.greylist.RcptRule()
		chain.Rcpt("greylist", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient) policy.Verdict {
			if !a.local.Has(rcpt.Addr) {
				return policy.Next()
			}
			return greylist(ctx, tx, rcpt)
		})
	}
}

// close saves the greylisting state.
func (a *abuse) close() {
	if a == nil || a.greylist == nil {
		return
	}
	if err := a.greylist.Close(); err != nil {
		a.log.Error("greylist state not saved", "error", err)
	}
}
