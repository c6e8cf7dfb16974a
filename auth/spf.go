package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"

	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// SPFIdentity selects which identity CheckSPF checks (RFC 7208 section 2).
type SPFIdentity uint8

const (
	// SPFMailFrom checks the MAIL FROM identity; a null sender is checked
	// as postmaster@<HELO name> (RFC 7208 section 2.4).
	SPFMailFrom SPFIdentity = iota + 1
	// SPFHelo checks the HELO identity only (RFC 7208 section 2.3).
	SPFHelo
	// SPFBoth checks HELO first, as RFC 7208 section 2.3 advises, then
	// MAIL FROM: a HELO result the mode denies with a 5xx (fail in soft
	// mode; fail, softfail or permerror in strict mode) denies at once;
	// any other HELO result is recorded nowhere and the MAIL FROM result
	// decides and is recorded. With a null sender the MAIL FROM identity is
	// the HELO identity, so HELO is checked once.
	SPFBoth
)

func (i SPFIdentity) String() string {
	switch i {
	case SPFMailFrom:
		return "mailfrom"
	case SPFHelo:
		return "helo"
	case SPFBoth:
		return "both"
	}
	return fmt.Sprintf("SPFIdentity(%d)", uint8(i))
}

// SPFMode selects what CheckSPF does with a result.
type SPFMode uint8

const (
	// SPFSoft denies fail (550 5.7.23); every other result is accepted and
	// recorded.
	SPFSoft SPFMode = iota + 1
	// SPFStrict denies fail and softfail (550 5.7.23) and permerror (550
	// 5.7.24, RFC 7372), defers temperror (451 4.7.24), and accepts pass,
	// neutral and none.
	SPFStrict
)

func (m SPFMode) String() string {
	switch m {
	case SPFSoft:
		return "soft"
	case SPFStrict:
		return "strict"
	}
	return fmt.Sprintf("SPFMode(%d)", uint8(m))
}

// SPFStatus is an SPF result (RFC 7208 section 2.6), as written in
// Received-SPF and Authentication-Results (spf=). It is the one type of an
// SPF result in this package: SPFResult.Result, and through it
// DMARCResult.SPF.
type SPFStatus string

// The SPF results.
const (
	SPFNone      SPFStatus = "none"
	SPFNeutral   SPFStatus = "neutral"
	SPFPass      SPFStatus = "pass"
	SPFFail      SPFStatus = "fail"
	SPFSoftFail  SPFStatus = "softfail"
	SPFTempError SPFStatus = "temperror"
	SPFPermError SPFStatus = "permerror"
)

// authres returns s as an Authentication-Results result value.
func (s SPFStatus) authres() authres.ResultValue { return authres.ResultValue(s) }

func (s SPFStatus) valid() bool {
	switch s {
	case SPFNone, SPFNeutral, SPFPass, SPFFail, SPFSoftFail, SPFTempError, SPFPermError:
		return true
	}
	return false
}

// SPFResult is the outcome of one SPF check, as recorded under SPFResultKey
// and in the Received-SPF field. It round-trips through encoding/json, so
// it survives queueing (see policy.Key).
type SPFResult struct {
	Result   SPFStatus
	Identity string     // "mailfrom" or "helo"
	Domain   string     // the checked identity's domain
	Sender   string     // the mailbox checked: MAIL FROM, or postmaster@<HELO name>
	ClientIP netip.Addr // the address checked
	Helo     string     // the HELO name the client gave
	Receiver string     // the host that did the check
	Problem  string     // for temperror and permerror: what went wrong
}

// SPFResultKey holds the SPF result of the transaction, for later rules
// (CheckDMARC), before and after queueing. It is not set when the check was
// skipped (an authenticated session) or not configured; CheckDMARC then
// evaluates with no SPF result (as SPF none).
const SPFResultKey policy.Key[SPFResult] = "auth.spf"

// SPFOptions configure CheckSPF. Every field's zero value is a usable
// default. CheckSPF copies the options: changing them afterwards has no
// effect on the rule.
type SPFOptions struct {
	// Identity selects the identity checked (see SPFIdentity); zero means
	// SPFMailFrom, the identity DMARC aligns.
	Identity SPFIdentity
	// Mode selects what the rule does with a result (see SPFMode); zero
	// means SPFSoft.
	Mode SPFMode
	// Resolver answers the DNS lookups; nil means net.DefaultResolver. It
	// is wrapped in a Resolver, so any policy.Resolver classifies its
	// errors right.
	Resolver policy.Resolver
	// Timeout bounds the whole check; zero means 10 s. The rule's context
	// bounds it too. Running out of time gives temperror.
	Timeout time.Duration
	// LookupTimeout bounds each DNS lookup; zero means
	// DefaultLookupTimeout.
	LookupTimeout time.Duration
	// Receiver is our host name, written in receiver= of Received-SPF;
	// "" means os.Hostname() (or "localhost" when it is unknown).
	Receiver string
	// CheckAuthenticated also checks sessions that authenticated with SMTP
	// AUTH. By default they are skipped: a roaming user sending through
	// our submission service from a hotel network is not an SPF-authorized
	// host of their domain, and the result must not be held against them.
	CheckAuthenticated bool
	// OmitReceivedSPF leaves out the Received-SPF field; by default the
	// rule adds one. The result is stored under SPFResultKey either way.
	OmitReceivedSPF bool
	// HeloCacheTTL keeps the result of the HELO identity for a client
	// address and HELO name this long, so that a session sending many
	// messages checks its HELO once; zero means 5 minutes, a negative
	// value turns the cache off. Temporary errors are never kept.
	HeloCacheTTL time.Duration
	// Logger receives check results (debug) and DNS trouble (warn); nil
	// means slog.Default().
	Logger *slog.Logger
}

// heloCache holds HELO identity results by client address and HELO name.
type heloCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	entries map[heloKey]heloEntry
}

type heloKey struct {
	ip   netip.Addr
	helo string
}

type heloEntry struct {
	result  SPFResult
	expires time.Time
}

// maxHeloEntries bounds the cache; when full it starts over, which costs a
// few lookups and keeps memory bounded whatever clients send.
const maxHeloEntries = 4096

func (c *heloCache) get(ip netip.Addr, helo string, now time.Time) (SPFResult, bool) {
	if c == nil {
		return SPFResult{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[heloKey{ip, helo}]
	if !ok || now.After(e.expires) {
		return SPFResult{}, false
	}
	return e.result, true
}

func (c *heloCache) put(ip netip.Addr, helo string, r SPFResult, now time.Time) {
	if c == nil || r.Result == SPFTempError {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxHeloEntries {
		clear(c.entries)
	}
	c.entries[heloKey{ip, helo}] = heloEntry{result: r, expires: now.Add(c.ttl)}
}

// CheckSPF returns a mail-stage rule that checks SPF (RFC 7208) for the
// client's address and the identity opts.Identity chooses (see
// SPFIdentity), and applies opts.Mode (see SPFMode):
//
//	result      soft          strict
//	fail        550 5.7.23    550 5.7.23
//	softfail    Next          550 5.7.23
//	permerror   Next          550 5.7.24
//	temperror   Next          451 4.7.24
//	pass, neutral, none: Next
//
// It stores the deciding result under SPFResultKey, which later rules
// (CheckDMARC, even after queueing) read, and adds a Received-SPF trace
// field (RFC 7208 section 9.1) to tx.Header, which the smtp package
// prepends to the message, for whoever reads the message downstream. A
// HELO name or domain that is an address literal, malformed, or a single
// label gives none without any lookup (RFC 7208 section 4.3).
//
// CheckSPF panics on an invalid identity or mode (other than zero): that
// is a configuration error to catch at start-up.
func CheckSPF(opts SPFOptions) policy.MailRule {
	identity, mode := opts.Identity, opts.Mode
	if identity == 0 {
		identity = SPFMailFrom
	}
	if mode == 0 {
		mode = SPFSoft
	}
	if identity < SPFMailFrom || identity > SPFBoth {
		panic("auth: CheckSPF: invalid identity " + identity.String())
	}
	if mode != SPFSoft && mode != SPFStrict {
		panic("auth: CheckSPF: invalid mode " + mode.String())
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	lookupTimeout := opts.LookupTimeout
	if lookupTimeout <= 0 {
		lookupTimeout = DefaultLookupTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	receiver := opts.Receiver
	if receiver == "" {
		receiver, _ = os.Hostname()
	}
	if receiver == "" {
		receiver = "localhost"
	}
	res := NewResolver(opts.Resolver, lookupTimeout)
	var cache *heloCache
	ttl := opts.HeloCacheTTL
	if ttl == 0 {
		ttl = 5 * time.Minute
	}
	if ttl > 0 {
		cache = &heloCache{ttl: ttl, entries: map[heloKey]heloEntry{}}
	}

	return func(ctx context.Context, tx *policy.Transaction) policy.Verdict {
		if tx.Conn == nil || !tx.Conn.Remote.Addr().IsValid() {
			return policy.Fail(errors.New("auth: SPF: no client address"))
		}
		if !opts.CheckAuthenticated && tx.Conn.Authenticated() {
			return policy.Next()
		}
		ctx, cancel := lazyctx.WithTimeout(ctx, timeout)
		defer cancel()
		ip := tx.Conn.Remote.Addr().Unmap()
		helo := tx.Conn.Helo

		var result SPFResult
		checkMail := identity != SPFHelo
		if identity != SPFMailFrom {
			now := time.Now()
			var ok bool
			if result, ok = cache.get(ip, helo, now); !ok {
				result = checkSPF(ctx, res, ip, helo, heloSender(helo), "helo", receiver)
				cache.put(ip, helo, result, now)
			}
			if identity == SPFBoth && mode.denies(result.Result) && result.Result != SPFTempError {
				checkMail = false
			}
			if identity == SPFBoth && tx.From.IsNull() && checkMail {
				// The MAIL FROM identity is postmaster@<HELO>: the same
				// check, recorded as the mailfrom identity.
				result.Identity = "mailfrom"
				checkMail = false
			}
		}
		if checkMail {
			sender, _ := mailSender(tx.From, helo)
			result = checkSPF(ctx, res, ip, helo, sender, "mailfrom", receiver)
		}

		SPFResultKey.Set(tx, result)
		if !opts.OmitReceivedSPF {
			// foldField, not Header.Add: Add folds at every Unicode space
			// (strings.Fields), and would turn a U+00A0 in a quoted
			// SMTPUTF8 sender or HELO name into an ASCII space.
			tx.Header.AddRaw(foldField("Received-SPF", result.ReceivedSPF()))
		}
		lvl := slog.LevelDebug
		if result.Result == SPFTempError {
			lvl = slog.LevelWarn
		}
		log.Log(ctx, lvl, "spf", slog.String("result", string(result.Result)),
			slog.String("identity", result.Identity), slog.String("domain", result.Domain),
			slog.String("client_ip", ip.String()), slog.String("problem", result.Problem))
		return mode.verdict(result)
	}
}

// denies reports whether the mode refuses a result.
func (m SPFMode) denies(s SPFStatus) bool {
	switch s {
	case SPFFail:
		return true
	case SPFSoftFail, SPFPermError, SPFTempError:
		return m == SPFStrict
	}
	return false
}

func (m SPFMode) verdict(r SPFResult) policy.Verdict {
	if !m.denies(r.Result) {
		return policy.Next()
	}
	what := "the domain of " + r.Sender
	if r.Identity == "helo" {
		what = "the HELO name " + r.Domain
	}
	switch r.Result {
	case SPFTempError:
		return policy.Deny(451, "4.7.24", "SPF temporary error checking "+what+", try again later")
	case SPFPermError:
		return policy.Deny(550, "5.7.24", "SPF permanent error in the policy of "+what)
	case SPFSoftFail:
		return policy.Deny(550, "5.7.23", "SPF softfail: "+what+" does not designate "+r.ClientIP.String()+" as permitted sender")
	default:
		return policy.Deny(550, "5.7.23", "SPF fail: "+what+" does not designate "+r.ClientIP.String()+" as permitted sender")
	}
}

// heloSender is the mailbox checked for the HELO identity.
func heloSender(helo string) string { return "postmaster@" + strings.TrimSuffix(helo, ".") }

// mailSender is the mailbox checked for the MAIL FROM identity: the sender,
// postmaster@<domain> when it has no local part, postmaster@<HELO> for the
// null sender (RFC 7208 sections 2.4 and 4.3).
func mailSender(from policy.Address, helo string) (sender string, null bool) {
	switch {
	case from.IsNull():
		return heloSender(helo), true
	case from.Local == "":
		return "postmaster@" + from.Domain, false
	}
	local := from.Local
	if strings.Contains(local, "@") {
		// The library splits at the first "@"; a quoted local part
		// containing one would move the domain. Keep the domain right.
		local = strings.ReplaceAll(local, "@", "=")
	}
	return local + "@" + from.Domain, false
}

// spfDomain validates the domain of an identity (RFC 7208 section 4.3):
// it must be a well-formed multi-label name.
func spfDomain(d string) (string, bool) {
	if d == "" || strings.HasPrefix(d, "[") {
		return "", false
	}
	n, err := policy.NormalizeDomain(d)
	if err != nil || !strings.Contains(n, ".") {
		return "", false
	}
	return n, true
}

// checkSPF runs one check_host().
func checkSPF(ctx context.Context, r *Resolver, ip netip.Addr, helo, sender, identity, receiver string) SPFResult {
	at := strings.LastIndexByte(sender, '@')
	rawDomain := sender[at+1:]
	res := SPFResult{Identity: identity, Sender: sender, ClientIP: ip, Helo: helo, Receiver: receiver, Domain: strings.ToLower(rawDomain)}
	domain, ok := spfDomain(rawDomain)
	if !ok {
		res.Result, res.Problem = SPFNone, "no valid domain to check"
		return res
	}
	res.Domain = domain
	res.Sender = sender[:at+1] + domain
	st, err := spf.CheckHostWithSender(net.IP(ip.AsSlice()), helo, res.Sender,
		spf.WithResolver(r), spf.WithContext(ctx))
	res.Result = SPFStatus(st)
	if !res.Result.valid() {
		res.Result = SPFPermError
	}
	if (res.Result == SPFTempError || res.Result == SPFPermError) && err != nil {
		res.Problem = err.Error()
		var de *net.DNSError
		if errors.As(err, &de) {
			// Without the server address, which is nobody's business.
			res.Problem = "DNS lookup of " + strings.TrimSuffix(de.Name, ".") + " failed: " + de.Err
		}
	}
	return res
}

// ReceivedSPF formats r as the value of a Received-SPF field (RFC 7208
// section 9.1), with a comment, client-ip, envelope-from, helo, receiver,
// identity and, for errors, problem.
func (r SPFResult) ReceivedSPF() string {
	var b strings.Builder
	b.WriteString(string(r.Result))
	b.WriteString(" (")
	b.WriteString(commentSafe(r.receiverName() + ": " + r.comment()))
	b.WriteString(")")
	kv := func(k, v string) {
		b.WriteString(" ")
		b.WriteString(k)
		b.WriteString("=")
		b.WriteString(kvValue(v))
		b.WriteString(";")
	}
	if r.ClientIP.IsValid() {
		kv("client-ip", r.ClientIP.String())
	}
	kv("envelope-from", r.Sender)
	kv("helo", r.Helo)
	if r.Problem != "" {
		kv("problem", r.Problem)
	}
	kv("receiver", r.receiverName())
	kv("identity", r.Identity)
	return strings.TrimSuffix(b.String(), ";")
}

func (r SPFResult) receiverName() string {
	if r.Receiver == "" {
		return "localhost"
	}
	return r.Receiver
}

func (r SPFResult) comment() string {
	who := "domain of " + r.Sender
	if r.Identity == "helo" {
		who = "domain of HELO " + r.Domain
	}
	ip := r.ClientIP.String()
	switch r.Result {
	case SPFPass:
		return who + " designates " + ip + " as permitted sender"
	case SPFFail:
		return who + " does not designate " + ip + " as permitted sender"
	case SPFSoftFail:
		return "transitioning " + who + " does not designate " + ip + " as permitted sender"
	case SPFNeutral:
		return ip + " is neither permitted nor denied by " + who
	case SPFTempError:
		return "temporary error checking " + who
	case SPFPermError:
		return "permanent error in the policy of " + who
	}
	return who + " does not designate permitted sender hosts"
}

// commentSafe keeps a comment balanced: no parentheses, backslashes or
// control characters from client-supplied names.
func commentSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '(' || r == ')' || r == '\\':
			return '_'
		case r < 0x20 || r == 0x7f:
			return ' '
		}
		return r
	}, s)
}

// kvValue writes v as a dot-atom when it is one (or an IP address without
// a zone, which is written bare by convention), else as a quoted-string.
func kvValue(v string) string {
	if v != "" && (isSPFDotAtom(v) || isIPText(v)) {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// isIPText reports whether v is an IP address without a zone: a zone
// ("fe80::1%eth0") may hold any character, ";" included, so a value with
// one is quoted.
func isIPText(v string) bool {
	a, err := netip.ParseAddr(v)
	return err == nil && a.Zone() == ""
}

// isSPFDotAtom reports whether v is an RFC 5322 dot-atom made of ASCII
// atext (so that "@" is allowed only inside a quoted value).
func isSPFDotAtom(v string) bool {
	if v == "" || v[0] == '.' || v[len(v)-1] == '.' || strings.Contains(v, "..") {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// foldField formats "name: value" CRLF-terminated, folding at spaces so
// that lines stay within 78 characters where possible. CR and LF in value
// become spaces, so no field can be injected.
func foldField(name, value string) []byte {
	value = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, value)
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(":")
	lineLen := len(name) + 1
	// Every space is kept (a run of them may be inside a quoted value);
	// a fold goes before a space that precedes a word, never making a
	// line of white space only.
	for i, word := range strings.Split(value, " ") {
		if i > 0 && word != "" && lineLen+1+len(word) > 78 {
			b.WriteString("\r\n ")
			lineLen = 1
		} else {
			b.WriteByte(' ')
			lineLen++
		}
		b.WriteString(word)
		lineLen += len(word)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}
