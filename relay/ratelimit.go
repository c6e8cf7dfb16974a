package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/mtakit/mtakit/policy"
)

// Rate is an allowance of N events per period Per, such as 200 per hour.
// Short bursts up to N are allowed; the allowance refills evenly over Per.
// The zero Rate means no limit.
type Rate struct {
	N   int
	Per time.Duration
}

// IsZero reports whether r is the zero Rate: no limit.
func (r Rate) IsZero() bool { return r.N == 0 && r.Per == 0 }

// String returns r as ParseRateLimits reads it, "200/h"; "" for no limit.
func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	switch r.Per {
	case time.Second:
		return strconv.Itoa(r.N) + "/s"
	case time.Minute:
		return strconv.Itoa(r.N) + "/m"
	case time.Hour:
		return strconv.Itoa(r.N) + "/h"
	case 24 * time.Hour:
		return strconv.Itoa(r.N) + "/d"
	}
	return strconv.Itoa(r.N) + "/" + r.Per.String()
}

func (r Rate) limiter() *rate.Limiter {
	return rate.NewLimiter(rate.Limit(float64(r.N)/r.Per.Seconds()), r.N)
}

// RateLimits are the limits of one class of clients. A zero Rate is no
// limit.
type RateLimits struct {
	// Connections per client address, counted at connect.
	Connections Rate
	// Messages (MAIL commands accepted by the rules before this one), per
	// authenticated user or, for a client that has not authenticated, per
	// client address.
	Messages Rate
	// Recipients (RCPT commands), per authenticated user or per client
	// address, as Messages.
	Recipients Rate
}

// ParseRateLimits parses limits written as "msgs=200/h,rcpts=1000/h,conns=60/m":
// a comma-separated list of name=N/period, name one of conns, msgs and
// rcpts, period s, m, h, d or a Go duration ("90s"). A name left out, and
// "off", set no limit; "" gives no limits at all.
func ParseRateLimits(s string) (RateLimits, error) {
	var l RateLimits
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			return RateLimits{}, fmt.Errorf("relay: rate limit %q: want name=N/period", part)
		}
		r, err := parseRate(strings.TrimSpace(val))
		if err != nil {
			return RateLimits{}, fmt.Errorf("relay: rate limit %q: %w", part, err)
		}
		switch strings.TrimSpace(name) {
		case "conns":
			l.Connections = r
		case "msgs":
			l.Messages = r
		case "rcpts":
			l.Recipients = r
		default:
			return RateLimits{}, fmt.Errorf("relay: rate limit %q: unknown name %q (want conns, msgs or rcpts)", part, name)
		}
	}
	return l, nil
}

func parseRate(s string) (Rate, error) {
	if s == "off" {
		return Rate{}, nil
	}
	n, per, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("want N/period, not %q", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count <= 0 {
		return Rate{}, fmt.Errorf("bad count %q", n)
	}
	var d time.Duration
	switch per {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	case "d":
		d = 24 * time.Hour
	default:
		if d, err = time.ParseDuration(per); err != nil || d <= 0 {
			return Rate{}, fmt.Errorf("bad period %q (want s, m, h, d or a duration)", per)
		}
	}
	return Rate{N: count, Per: d}, nil
}

func (l RateLimits) validate() error {
	for _, r := range []Rate{l.Connections, l.Messages, l.Recipients} {
		if !r.IsZero() && (r.N <= 0 || r.Per <= 0) {
			return fmt.Errorf("relay: rate limit %d per %v: both must be positive", r.N, r.Per)
		}
	}
	return nil
}

// RateLimitOptions configure NewRateLimiter. The zero value limits
// nothing.
type RateLimitOptions struct {
	// Limits apply to every client, except that Trusted replaces them
	// for trusted ones.
	Limits RateLimits
	// Trusted are the limits of clients in Internal and of authenticated
	// clients; each zero Rate of it means the Rate of Limits. An
	// authenticated account that was broken into is the most common
	// source of spam from a small server: keep a limit on it.
	Trusted RateLimits
	// Internal lists the trusted networks (mynetworks).
	Internal []netip.Prefix
	// MaxClients bounds the clients (addresses and users) remembered per
	// limit; zero means 10000. When full, the client seen least recently
	// is forgotten and starts afresh when it comes back: memory stays
	// bounded whatever clients do.
	MaxClients int
	// Store, when set, keeps the counts instead of this process's memory,
	// so that the nodes of a fleet sharing it share the limits: a client
	// gets N per Per from all of them together, not from each. Its
	// values must live at least the longest Per of Limits and Trusted.
	// MaxClients does not apply to it. When the store fails (a cluster
	// without quorum), the limit is not enforced and the failure is
	// logged (error): a limit protects, it must not stop the mail. nil:
	// memory, per process.
	Store StateStore
	// Now is the clock; nil means time.Now. Tests set a fake one.
	Now func() time.Time
	// Logger receives clients over a limit (info) and failures of Store
	// (error); nil means slog.Default().
	Logger *slog.Logger
}

// RateLimiter limits how often a client connects, sends messages and
// names recipients, with token buckets (golang.org/x/time/rate) kept in
// a memory bounded per limit. A client over a limit gets 450 4.7.1 with
// Postfix's wording ("Error: too many connections from [192.0.2.1]"); at
// connect the smtp package sends it as 421. IPv6 clients are counted per
// /64, the smallest network a site gets: counting single addresses would
// let a client evade the limit by changing its address.
//
// Make one with NewRateLimiter and register its rules; it is safe for
// concurrent use. Its counts are per process, several nodes each counting
// their own, unless RateLimitOptions.Store shares them.
type RateLimiter struct {
	limits, trusted RateLimits
	internal        []netip.Prefix
	store           StateStore
	now             func() time.Time
	log             *slog.Logger

	mu                 sync.Mutex
	conns, msgs, rcpts *lru[string, *rate.Limiter]
}

// NewRateLimiter validates opts and returns the limiter. It fails when a
// Rate has a count or period that is not positive. The options are copied.
func NewRateLimiter(opts RateLimitOptions) (*RateLimiter, error) {
	if err := opts.Limits.validate(); err != nil {
		return nil, err
	}
	if err := opts.Trusted.validate(); err != nil {
		return nil, err
	}
	size := opts.MaxClients
	if size <= 0 {
		size = 10000
	}
	l := &RateLimiter{limits: opts.Limits, trusted: opts.Trusted, internal: append([]netip.Prefix(nil), opts.Internal...),
		store: opts.Store, now: opts.Now, log: opts.Logger,
		conns: newLRU[string, *rate.Limiter](size), msgs: newLRU[string, *rate.Limiter](size), rcpts: newLRU[string, *rate.Limiter](size)}
	for _, p := range []struct{ t, d *Rate }{
		{&l.trusted.Connections, &l.limits.Connections},
		{&l.trusted.Messages, &l.limits.Messages},
		{&l.trusted.Recipients, &l.limits.Recipients},
	} {
		if p.t.IsZero() {
			*p.t = *p.d
		}
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	return l, nil
}

// clientKey is the key a client address is counted under: the address,
// or its /64 for IPv6.
func clientKey(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// allow takes one token from the bucket of key in set, made with r when
// new. what names the set in the shared store.
func (l *RateLimiter) allow(ctx context.Context, set *lru[string, *rate.Limiter], what, key string, r Rate) bool {
	if r.IsZero() {
		return true
	}
	now := l.now()
	if l.store != nil {
		var ok bool
		if _, err := l.store.Update(ctx, what+":"+key, takeToken(r, now, &ok)); err != nil {
			l.log.LogAttrs(ctx, slog.LevelError, "rate limit not enforced: shared state failed", slog.String("limit", what), slog.String("client", key), slog.String("error", err.Error()))
			return true
		}
		return ok
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := set.get(key)
	if !ok {
		lim = r.limiter()
		set.add(key, lim)
	}
	return lim.AllowN(now, 1)
}

func (l *RateLimiter) limitsFor(c *policy.Conn) RateLimits {
	if c != nil && (c.Authenticated() || InNetworks(c.Remote.Addr(), l.internal)) {
		return l.trusted
	}
	return l.limits
}

// who is the key and the name in replies of the sender of a transaction:
// the authenticated user, or the client address.
func who(c *policy.Conn) (key, name string) {
	if c.Authenticated() {
		return "user:" + c.AuthUser, c.AuthUser
	}
	return clientKey(c.Remote.Addr()), "[" + c.Remote.Addr().Unmap().WithZone("").String() + "]"
}

func (l *RateLimiter) refuse(ctx context.Context, what, name string) policy.Verdict {
	l.log.LogAttrs(ctx, slog.LevelInfo, "rate limit reached", slog.String("limit", what), slog.String("client", name))
	text := "Error: too many " + what + " from " + name
	if what == "messages" {
		text = "Error: too much mail from " + name
	}
	return policy.Deny(450, "4.7.1", text)
}

// ConnectRule returns the rule counting connections per client address.
func (l *RateLimiter) ConnectRule() policy.ConnectRule {
	return func(ctx context.Context, c *policy.Conn) policy.Verdict {
		if c == nil {
			return policy.Next()
		}
		if !l.allow(ctx, l.conns, "conns", clientKey(c.Remote.Addr()), l.limitsFor(c).Connections) {
			return l.refuse(ctx, "connections", "["+c.Remote.Addr().Unmap().WithZone("").String()+"]")
		}
		return policy.Next()
	}
}

// MailRule returns the rule counting messages (MAIL commands).
func (l *RateLimiter) MailRule() policy.MailRule {
	return func(ctx context.Context, tx *policy.Transaction) policy.Verdict {
		if tx.Conn == nil {
			return policy.Next()
		}
		key, name := who(tx.Conn)
		if !l.allow(ctx, l.msgs, "msgs", key, l.limitsFor(tx.Conn).Messages) {
			return l.refuse(ctx, "messages", name)
		}
		return policy.Next()
	}
}

// RcptRule returns the rule counting recipients (RCPT commands). Register
// it before the relay rules, which accept and end the stage, so that
// every recipient counts, refused ones too.
func (l *RateLimiter) RcptRule() policy.RcptRule {
	return func(ctx context.Context, tx *policy.Transaction, _ policy.Recipient) policy.Verdict {
		if tx.Conn == nil {
			return policy.Next()
		}
		key, name := who(tx.Conn)
		if !l.allow(ctx, l.rcpts, "rcpts", key, l.limitsFor(tx.Conn).Recipients) {
			return l.refuse(ctx, "recipients", name)
		}
		return policy.Next()
	}
}
