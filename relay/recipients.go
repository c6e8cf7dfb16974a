package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// RecipientConfig configures NewRecipientTable. Every field's zero value is
// a documented default; the table copies the config, so changing it
// afterwards has no effect.
type RecipientConfig struct {
	// Domains are the local (virtual) domains the table answers for. A
	// recipient in any other domain is not the table's business: its rcpt
	// rule says Next and leaves it to the relay rule. An account in a
	// domain not listed here is still a login (see Owns) but never a
	// recipient. The first domain is the primary one (see Mailbox).
	Domains []string

	// Accounts are mailboxes, as addresses ("john@example.com"). They are
	// merged with those of AccountFile.
	Accounts []string
	// AccountFile, when set, is a file with one account per line: an
	// address, optionally followed by a colon and anything else, so the
	// credential file of package auth ("address:bcrypt-hash") serves as
	// is. Blank lines and lines starting with "#" are ignored. Reload and
	// Watch read it again.
	AccountFile string

	// Aliases map an alias ("team@example.com") to its targets, local
	// accounts, other aliases or remote addresses. The key "@example.com"
	// is the catch-all of that domain: every local part that is neither
	// an account nor an alias goes to its targets. They are merged with
	// those of AliasFile; an alias defined twice is an error.
	Aliases map[string][]string
	// AliasFile, when set, is a file of lines "alias@domain: target[,
	// target...]" (or "@domain: target" for a catch-all), with "#"
	// comments. Reload and Watch read it again.
	AliasFile string

	// Senders grants addresses to logins for sender ownership (Owns): the
	// key is an address, the value the logins that may also send as it.
	Senders map[string][]string

	// Separator lists the characters that start a subaddress: with "+",
	// "john+lists@example.com" is john's. Zero means "+". Each character
	// is a separator (Postfix's recipient_delimiter). NoSubaddress turns
	// subaddressing off.
	Separator    string
	NoSubaddress bool

	// Postmaster is where "postmaster" and "abuse" (RFC 2142) of every
	// local domain go when the table has no alias for them. "" means the
	// first account of the domain, else the first account of the table,
	// else the mailbox "postmaster" of the primary domain.
	Postmaster string

	// MaxAliasDepth bounds alias expansion: an alias reached through more
	// than this many aliases fails the message with 554 5.4.6. Zero means
	// 16. Cycles are refused when the table loads.
	MaxAliasDepth int
	// MaxExpansion bounds the recipients one message has after expansion;
	// beyond it the message fails with 554 5.5.3. Zero means 1000.
	MaxExpansion int

	// LocalTransport is the transport DeliveryRule routes accounts to.
	// Zero means "maildir".
	LocalTransport string

	// Logger receives reloads (info) and failed reloads (error); nil means
	// slog.Default().
	Logger *slog.Logger
}

// RecipientTable knows the local recipients of a set of virtual domains:
// accounts, aliases, catch-alls, subaddresses, and the postmaster and
// abuse addresses of RFC 2142 that every domain has. It gives the rules
// that use it:
//
//   - RcptRule, at rcpt: an unknown local recipient gets 550 5.1.1;
//   - ExpandRule, at preq: aliases are replaced by their targets in
//     tx.Rcpts, before the message is queued;
//   - DeliveryRule, at delivery: an account goes to its mailbox.
//
// It also answers Owns for auth.CheckSenderLogin. Local parts compare
// case-insensitively. It is safe for concurrent use; Reload and Watch read
// the files again and swap the new table in atomically, so a rule sees
// either the old table or the new one, never a mix.
type RecipientTable struct {
	cfg RecipientConfig
	log *slog.Logger

	reloadMu sync.Mutex
	cur      atomic.Pointer[recipientSnapshot]
	stamps   atomic.Pointer[[2]fileStamp]
}

type fileStamp struct {
	mod  time.Time
	size int64
	ok   bool
}

// recipientSnapshot is one loaded table; it never changes.
type recipientSnapshot struct {
	domains  Domains
	primary  string
	accounts map[string]policy.Address // folded address -> account as written
	aliases  map[string][]policy.Address
	owners   map[string]map[string]bool // folded address -> folded logins owning it
	// postmaster maps a local domain to the target of its postmaster and
	// abuse addresses when no alias defines them.
	postmaster map[string]policy.Address
	seps       string
}

// NewRecipientTable loads the table: the accounts and aliases of cfg and
// of its files. It fails when a file cannot be read, on any bad line (the
// error names the file and line, see TableError), when an alias leads back
// to itself, when an alias is not in a local domain, and when a local
// target is neither an account nor an alias.
func NewRecipientTable(cfg RecipientConfig) (*RecipientTable, error) {
	cfg.Domains = slices.Clone(cfg.Domains)
	cfg.Accounts = slices.Clone(cfg.Accounts)
	cfg.Aliases = cloneLists(cfg.Aliases)
	cfg.Senders = cloneLists(cfg.Senders)
	if len(cfg.Domains) == 0 {
		return nil, errors.New("relay: RecipientConfig.Domains is empty")
	}
	t := &RecipientTable{cfg: cfg, log: cfg.Logger}
	if t.log == nil {
		t.log = slog.Default()
	}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

func cloneLists(m map[string][]string) map[string][]string {
	if m == nil {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		out[k] = slices.Clone(v)
	}
	return out
}

// Reload reads the account and alias files again and swaps the new table
// in. On any error the table in force stays, and the error is returned.
func (t *RecipientTable) Reload() error {
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	stamps := [2]fileStamp{statFile(t.cfg.AccountFile), statFile(t.cfg.AliasFile)}
	s, err := t.load()
	if err != nil {
		return err
	}
	t.cur.Store(s)
	t.stamps.Store(&stamps)
	t.log.Info("recipients loaded", slog.Int("accounts", len(s.accounts)), slog.Int("aliases", len(s.aliases)),
		slog.String("accounts_file", t.cfg.AccountFile), slog.String("aliases_file", t.cfg.AliasFile))
	return nil
}

func statFile(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{mod: st.ModTime(), size: st.Size(), ok: true}
}

// Watch checks the table's files every interval until ctx is done, then
// returns nil. When the modification time or size of one changes and then
// stays the same for one more interval (a file being written in place is
// not read half-written), the table is reloaded. A failed reload is logged
// and the table in force stays until the files change again.
func (t *RecipientTable) Watch(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("relay: Watch interval must be positive")
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var pending *[2]fileStamp // a change seen at the last tick, not loaded yet
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := [2]fileStamp{statFile(t.cfg.AccountFile), statFile(t.cfg.AliasFile)}
		if prev := t.stamps.Load(); prev != nil && *prev == now {
			pending = nil
			continue
		}
		// A file seen changing is read once it has stayed the same for a
		// whole interval: one being written in place (truncated, then
		// filled) must not load half-written.
		if pending == nil || *pending != now {
			pending = &now
			continue
		}
		pending = nil
		if err := t.Reload(); err != nil {
			t.log.Error("recipients reload failed, keeping the previous table", slog.String("error", err.Error()))
			// Do not retry the same broken files every tick.
			t.stamps.Store(&now)
		}
	}
}

func (t *RecipientTable) load() (*recipientSnapshot, error) {
	cfg := &t.cfg
	s := &recipientSnapshot{
		domains:    NewDomains(cfg.Domains...),
		accounts:   map[string]policy.Address{},
		aliases:    map[string][]policy.Address{},
		owners:     map[string]map[string]bool{},
		postmaster: map[string]policy.Address{},
		seps:       cfg.Separator,
	}
	if s.seps == "" {
		s.seps = "+"
	}
	if cfg.NoSubaddress {
		s.seps = ""
	}
	if p, err := policy.NormalizeDomain(strings.TrimSpace(cfg.Domains[0])); err == nil {
		s.primary = p
	} else {
		return nil, fmt.Errorf("relay: bad domain %q: %w", cfg.Domains[0], err)
	}

	// Accounts, in order: the config's, then the file's.
	var order []policy.Address
	for _, a := range cfg.Accounts {
		addr, err := targetAddress(strings.TrimSpace(a))
		if err != nil {
			return nil, &TableError{Msg: fmt.Sprintf("bad account %q: %v", a, err)}
		}
		order = append(order, addr)
	}
	if cfg.AccountFile != "" {
		f, err := os.Open(cfg.AccountFile)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		lines, err := parseAccounts(f, cfg.AccountFile)
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			order = append(order, l.addr)
		}
	}
	for _, a := range order {
		if _, dup := s.accounts[foldAddr(a)]; !dup {
			s.accounts[foldAddr(a)] = a
		}
	}

	// Aliases: the config's, then the file's.
	var lines []aliasLine
	keys := make([]string, 0, len(cfg.Aliases))
	for k := range cfg.Aliases {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		key, err := aliasKey(strings.TrimSpace(k))
		if err != nil {
			return nil, &TableError{Msg: fmt.Sprintf("bad alias %q: %v", k, err)}
		}
		l := aliasLine{key: key}
		for _, v := range cfg.Aliases[k] {
			a, err := targetAddress(strings.TrimSpace(v))
			if err != nil {
				return nil, &TableError{Msg: fmt.Sprintf("alias %s: bad target %q: %v", key, v, err)}
			}
			l.targets = append(l.targets, a)
		}
		if len(l.targets) == 0 {
			return nil, &TableError{Msg: fmt.Sprintf("alias %s has no target", key)}
		}
		lines = append(lines, l)
	}
	if cfg.AliasFile != "" {
		f, err := os.Open(cfg.AliasFile)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		fl, err := parseAliases(f, cfg.AliasFile)
		f.Close()
		if err != nil {
			return nil, err
		}
		lines = append(lines, fl...)
	}
	where := map[string]aliasLine{}
	var errs []error
	for _, l := range lines {
		bad := func(msg string, args ...any) {
			errs = append(errs, &TableError{Path: l.path, Line: l.line, Msg: fmt.Sprintf(msg, args...)})
		}
		if prev, dup := where[l.key]; dup {
			bad("alias %s defined twice (also %s)", l.key, lineRef(prev))
			continue
		}
		domain := l.key[strings.LastIndexByte(l.key, '@')+1:]
		if !s.domains.Contains(domain) {
			bad("alias %s is not in a local domain", l.key)
			continue
		}
		where[l.key] = l
		s.aliases[l.key] = dedupe(l.targets)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Postmaster and abuse of each domain.
	var pm policy.Address
	if cfg.Postmaster != "" {
		a, err := targetAddress(strings.TrimSpace(cfg.Postmaster))
		if err != nil {
			return nil, &TableError{Msg: fmt.Sprintf("bad postmaster %q: %v", cfg.Postmaster, err)}
		}
		pm = a
	}
	var firstLocal policy.Address
	for _, a := range order {
		if s.domains.Has(a) {
			firstLocal = a
			break
		}
	}
	if pm.IsNull() && firstLocal.IsNull() {
		// No account at all: postmaster gets a mailbox of its own.
		pm = policy.Address{Local: "postmaster", Domain: s.primary}
		s.accounts[foldAddr(pm)] = pm
	}
	for d := range s.domains.set {
		target := pm
		if target.IsNull() {
			for _, a := range order {
				if a.Domain == d {
					target = a
					break
				}
			}
		}
		if target.IsNull() {
			target = firstLocal
		}
		s.postmaster[d] = target
	}

	// Every local target must exist, and no alias may lead back to itself.
	for _, l := range lines {
		for _, tg := range s.aliases[l.key] {
			if !s.domains.Has(tg) {
				continue
			}
			if _, _, ok := s.lookup(tg, false); !ok {
				errs = append(errs, &TableError{Path: l.path, Line: l.line,
					Msg: fmt.Sprintf("alias %s: target %s is neither an account nor an alias", l.key, tg)})
			}
		}
	}
	if s.domains.Has(pm) {
		if _, _, ok := s.lookup(pm, false); !ok {
			errs = append(errs, &TableError{Msg: fmt.Sprintf("postmaster %s is neither an account nor an alias", pm)})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cycle := s.findCycle(); cycle != nil {
		l, ok := where[cycle[0]]
		if !ok {
			return nil, &TableError{Msg: "alias loop: " + strings.Join(cycle, " -> ")}
		}
		return nil, &TableError{Path: l.path, Line: l.line, Msg: "alias loop: " + strings.Join(cycle, " -> ")}
	}

	// Ownership: every login an alias leads to owns it; granted addresses.
	for key := range s.aliases {
		if strings.HasPrefix(key, "@") {
			continue // a catch-all gives no one the whole domain
		}
		for _, login := range s.expandAll(key) {
			s.own(key, login)
		}
	}
	for addr, logins := range cfg.Senders {
		a, err := targetAddress(strings.TrimSpace(addr))
		if err != nil {
			return nil, &TableError{Msg: fmt.Sprintf("bad sender %q: %v", addr, err)}
		}
		for _, login := range logins {
			s.own(foldAddr(a), foldLogin(login))
		}
	}
	return s, nil
}

func lineRef(l aliasLine) string {
	if l.path == "" {
		return "in RecipientConfig.Aliases"
	}
	return fmt.Sprintf("%s:%d", l.path, l.line)
}

func (s *recipientSnapshot) own(addr, login string) {
	m := s.owners[addr]
	if m == nil {
		m = map[string]bool{}
		s.owners[addr] = m
	}
	m[login] = true
}

func dedupe(in []policy.Address) []policy.Address {
	seen := map[string]bool{}
	out := in[:0:0]
	for _, a := range in {
		if k := foldAddr(a); !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// Kinds of a local recipient.
const (
	kindUnknown = iota
	kindAccount
	kindAlias
)

// subBase returns the local part without its subaddress, and whether it
// had one. A local part that starts with a separator keeps it.
func (s *recipientSnapshot) subBase(local string) (string, bool) {
	if s.seps == "" {
		return local, false
	}
	if i := strings.IndexAny(local, s.seps); i > 0 {
		return local[:i], true
	}
	return local, false
}

// keys returns the keys a is looked up under: a folded, then, when it has
// a subaddress, a folded without it. base is the folded local part without
// its subaddress.
func (s *recipientSnapshot) keys(a policy.Address) (keys []string, base string) {
	local := strings.ToLower(a.Local)
	keys = []string{policy.Address{Local: local, Domain: a.Domain}.String()}
	base, sub := s.subBase(local)
	if sub {
		keys = append(keys, policy.Address{Local: base, Domain: a.Domain}.String())
	}
	return keys, base
}

// lookup resolves a local recipient: the exact address first, then without
// its subaddress, then postmaster and abuse, then the domain's catch-all
// (when catchAll is set). It returns the kind, the key found (an account's
// or alias's), and whether it is known. The targets of the postmaster
// default are in s.postmaster.
func (s *recipientSnapshot) lookup(a policy.Address, catchAll bool) (kind int, key string, ok bool) {
	if a.Domain == "" && strings.EqualFold(a.Local, "postmaster") {
		a.Domain = s.primary
	}
	if !s.domains.Has(a) {
		return kindUnknown, "", false
	}
	cands, base := s.keys(a)
	for _, k := range cands {
		if _, ok := s.aliases[k]; ok {
			return kindAlias, k, true
		}
		if _, ok := s.accounts[k]; ok {
			return kindAccount, k, true
		}
	}
	if base == "postmaster" || base == "abuse" {
		return kindAlias, base + "@" + a.Domain, true
	}
	if catchAll {
		if _, ok := s.aliases["@"+a.Domain]; ok {
			return kindAlias, "@" + a.Domain, true
		}
	}
	return kindUnknown, "", false
}

// targets returns the targets of the alias key found by lookup.
func (s *recipientSnapshot) targets(key string) []policy.Address {
	if t, ok := s.aliases[key]; ok {
		return t
	}
	// postmaster@ or abuse@ without an alias of their own.
	return []policy.Address{s.postmaster[key[strings.LastIndexByte(key, '@')+1:]]}
}

// findCycle returns an alias cycle as the list of its keys, or nil. The
// nodes are the aliases and the postmaster and abuse addresses of every
// domain; an account ends an expansion.
func (s *recipientSnapshot) findCycle() []string {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var visit func(k string) []string
	visit = func(k string) []string {
		color[k] = grey
		stack = append(stack, k)
		for _, tg := range s.targets(k) {
			kind, next, ok := s.lookup(tg, false)
			if !ok || kind != kindAlias {
				continue
			}
			switch color[next] {
			case grey:
				i := slices.Index(stack, next)
				return append(slices.Clone(stack[i:]), next)
			case white:
				if c := visit(next); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[k] = black
		return nil
	}
	keys := make([]string, 0, len(s.aliases)+2*len(s.postmaster))
	for k := range s.aliases {
		keys = append(keys, k)
	}
	for d := range s.postmaster {
		keys = append(keys, "postmaster@"+d, "abuse@"+d)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if color[k] == white {
			if c := visit(k); c != nil {
				return c
			}
		}
	}
	return nil
}

// expandAll returns the folded addresses of every account and remote
// target alias key leads to (the table has no cycle).
func (s *recipientSnapshot) expandAll(key string) []string {
	var out []string
	seen := map[string]bool{}
	var walk func(k string, depth int)
	walk = func(k string, depth int) {
		if depth > 64 || seen[k] {
			return
		}
		seen[k] = true
		for _, tg := range s.targets(k) {
			kind, next, ok := s.lookup(tg, true)
			switch {
			case ok && kind == kindAlias:
				walk(next, depth+1)
			case ok:
				out = append(out, next)
			default:
				out = append(out, foldAddr(tg))
			}
		}
	}
	walk(key, 0)
	return out
}

// Has reports whether addr is a known local recipient: an account, an
// alias, postmaster or abuse of a local domain, or caught by its domain's
// catch-all; with or without a subaddress, in any case. A bare
// "postmaster" is the primary domain's.
func (t *RecipientTable) Has(addr policy.Address) bool {
	_, _, ok := t.cur.Load().lookup(addr, true)
	return ok
}

// Mailbox returns the mailbox of a local account, for a local transport's
// Route.Target: the account's local part in lower case without its
// subaddress for an account of the primary domain (the first of
// RecipientConfig.Domains), and "local@domain" for the other domains, so
// that two domains' accounts of the same name never share a mailbox. It
// returns false when addr is not an account (an alias, or unknown).
func (t *RecipientTable) Mailbox(addr policy.Address) (string, bool) {
	return t.cur.Load().mailbox(addr)
}

func (s *recipientSnapshot) mailbox(addr policy.Address) (string, bool) {
	kind, key, ok := s.lookup(addr, false)
	if !ok || kind != kindAccount {
		return "", false
	}
	return s.accountMailbox(key), true
}

// accountMailbox returns the mailbox of the account key found by lookup.
func (s *recipientSnapshot) accountMailbox(key string) string {
	a := s.accounts[key]
	local := strings.ToLower(a.Local)
	if a.Domain == s.primary {
		return local
	}
	return local + "@" + a.Domain
}

// Owns reports whether the authenticated login may use addr as its sender:
// addr is the login itself, an alias that leads to the login, or an
// address granted to it by RecipientConfig.Senders. Local parts compare
// case-insensitively and a subaddress is ignored ("john+news@" is john's).
// A catch-all gives no ownership, and neither do the postmaster and abuse
// defaults (define them as aliases to grant them). It satisfies
// auth.SenderOwners.
func (t *RecipientTable) Owns(login string, addr policy.Address) bool {
	if addr.IsNull() {
		return false
	}
	s := t.cur.Load()
	l := foldLogin(login)
	if l == "" {
		return false
	}
	cands, _ := s.keys(addr)
	for _, k := range cands {
		if k == l || s.owners[k][l] {
			return true
		}
	}
	return false
}

// foldLogin folds a login name as the table's keys are folded; a login
// that is not an address is only lower-cased.
func foldLogin(login string) string {
	login = strings.TrimSpace(login)
	a, err := policy.ParseAddress(login)
	if err != nil || a.IsNull() {
		return strings.ToLower(login)
	}
	return foldAddr(a)
}
