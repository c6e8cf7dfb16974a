package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/policy"
	"golang.org/x/net/publicsuffix"
)

// DMARCResult is the outcome of a DMARC evaluation (RFC 7489). It
// round-trips through encoding/json, so it survives queueing (see
// policy.Key).
type DMARCResult struct {
	// Result is pass (an aligned SPF or DKIM pass), fail (a policy was found
	// and nothing aligned passed), none (no policy published), temperror
	// (the policy lookup failed for now) or permerror (no usable From
	// domain, or only invalid policy records).
	Result authres.ResultValue

	FromDomain   string        // the RFC5322.From domain
	PolicyDomain string        // where the record was found: FromDomain or its organizational domain
	Record       *dmarc.Record // nil when none was found
	// Policy is the policy requested for this message (p=, or sp= for a
	// subdomain covered by its organizational domain's record); "" when
	// there is no record.
	Policy dmarc.Policy
	// Disposition is the policy applied after pct= sampling (RFC 7489
	// section 6.6.4: a message left out of the sample gets the next lower
	// policy); "none" on pass.
	Disposition dmarc.Policy

	// SPF is the SPF result evaluated, from SPFResultKey; its Result is ""
	// when the transaction holds none (SPF was not checked).
	SPF         SPFResult
	SPFAligned  bool   // SPF passed for a domain aligned with FromDomain
	DKIMDomain  string // the d= of the aligned passing signature
	DKIMAligned bool

	// Reason is why the result is temperror or permerror, as written in
	// reason= of Authentication-Results (without our DNS server's
	// address); "" otherwise.
	Reason string
}

// DMARCResultKey holds the DMARC result of the transaction for later rules.
const DMARCResultKey policy.Key[DMARCResult] = "auth.dmarc"

// DMARCOptions configure CheckDMARC.
type DMARCOptions struct {
	// Resolver looks up the _dmarc records; nil means net.DefaultResolver.
	Resolver TXTResolver
	// LookupTimeout bounds each lookup (default DefaultLookupTimeout).
	LookupTimeout time.Duration
	// AuthServID names this server in Authentication-Results; "" means
	// DefaultAuthServID().
	AuthServID string

	// QuarantineQueue is the quarantine for p=quarantine; "" means "dmarc".
	QuarantineQueue string
	// Monitor only records results and never denies nor quarantines.
	Monitor bool
	// DeferOnTempError answers 451 4.7.0 when the policy lookup failed
	// temporarily. Off by default: temperror is recorded and the message
	// goes on, as the mail may be legitimate and DNS may stay broken
	// longer than the sender retries.
	DeferOnTempError bool
	// AllowMalformedFrom lets a message without exactly one From address
	// through (recorded as permerror). By default it is denied with 550
	// 5.7.1, as RFC 7489 section 6.6.1 allows: such a message cannot be
	// evaluated, and letting it through would be a way around DMARC.
	AllowMalformedFrom bool

	// Rand returns a uniform integer in [0, n) for pct= sampling; nil means
	// math/rand/v2.IntN. Tests inject a fixed source.
	Rand func(n int) int

	// Decide, when set, turns the result into the verdict instead of the
	// default (reject: 550 5.7.1; quarantine: QuarantineQueue; others: Next).
	// The result is recorded before Decide runs.
	Decide func(ctx context.Context, tx *policy.Transaction, r DMARCResult) policy.Verdict

	// Logger receives one debug line per message; nil means slog.Default().
	Logger *slog.Logger
}

// CheckDMARC returns a preq or postq rule that evaluates DMARC (RFC 7489)
// for the message: it takes the domain of the From header (exactly one
// address), looks up the policy at _dmarc.<domain> and, failing that, at
// _dmarc.<organizational domain> (public suffix list), and checks whether
// SPF or DKIM passed for a domain aligned with it (relaxed: same
// organizational domain; strict: same domain, per adkim= and aspf=).
//
// The SPF result comes from SPFResultKey (CheckSPF must run first) and the
// DKIM results from DKIMResultsKey (VerifyDKIM must run first); both keys
// survive queueing, so the rule works the same before and after it. Nothing
// is read back from header fields. A transaction without an SPF result
// (CheckSPF not configured, or skipped for an authenticated session) is
// evaluated as SPF none: nothing SPF-aligned, and no spf= clause written.
// Likewise no DKIM results means no aligned DKIM pass.
//
// The result is recorded in an Authentication-Results field
// ("spf=pass smtp.mailfrom=example.com; dmarc=fail (p=reject dis=reject)
// header.from=example.com", the spf= clause being the SPF result it used)
// and under DMARCResultKey. The verdict, unless Monitor or Decide says otherwise: a
// failing message under p=reject is denied with 550 5.7.1, under
// p=quarantine quarantined, and goes on otherwise; pass, none, temperror
// and permerror go on (see DeferOnTempError and AllowMalformedFrom for the
// exceptions).
//
// The policy record is looked up for every message; the rule keeps the
// records it parsed, by their text (at most 1024 records of up to 2 KiB),
// so that a record seen before is not parsed again. Each result gets its
// own copy of the record.
func CheckDMARC(opts DMARCOptions) policy.MessageRule {
	if opts.AuthServID == "" {
		opts.AuthServID = DefaultAuthServID()
	}
	if opts.QuarantineQueue == "" {
		opts.QuarantineQueue = "dmarc"
	}
	if opts.Rand == nil {
		opts.Rand = rand.IntN
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	recs := &dmRecordCache{}
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		arStripForged(tx, m.Header, opts.AuthServID)
		var spfRes SPFResult
		if tx != nil {
			spfRes, _ = SPFResultKey.Get(tx)
		}
		res, err := dmEvaluate(ctx, opts, tx, m, spfRes, recs)
		if tx != nil {
			DMARCResultKey.Set(tx, res)
		}
		dmRecord(tx, m, opts.AuthServID, res)
		log.DebugContext(ctx, "dmarc", slog.String("result", string(res.Result)),
			slog.String("from", res.FromDomain), slog.String("policy", string(res.Policy)),
			slog.String("disposition", string(res.Disposition)))
		if opts.Decide != nil {
			return opts.Decide(ctx, tx, res)
		}
		if opts.Monitor {
			return policy.Next()
		}
		switch res.Result {
		case authres.ResultTempError:
			if opts.DeferOnTempError {
				return policy.Deny(451, "4.7.0", "DMARC policy lookup failed, try again later").WithErr(err)
			}
		case authres.ResultPermError:
			if res.FromDomain == "" && !opts.AllowMalformedFrom {
				return policy.Deny(550, "5.7.1", "DMARC: the From header must hold exactly one address")
			}
		case authres.ResultFail:
			switch res.Disposition {
			case dmarc.PolicyReject:
				return policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of "+res.FromDomain)
			case dmarc.PolicyQuarantine:
				return policy.QuarantineBecause(opts.QuarantineQueue, "DMARC fail for "+res.FromDomain+" (policy quarantine)")
			}
		}
		return policy.Next()
	}
}

// dmDomainOf returns the normalized domain of an address or domain s.
func dmDomainOf(s string) string {
	s = strings.Trim(strings.TrimSpace(s), "<>")
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		s = s[i+1:]
	}
	d, err := policy.NormalizeDomain(s)
	if err != nil {
		return strings.ToLower(s)
	}
	return d
}

// dmEvaluate computes the DMARC result for the SPF result spfRes (zero
// when SPF was not checked). The error is the cause of a temperror or
// permerror result, nil otherwise. recs (nil: none) keeps the records
// parsed before.
func dmEvaluate(ctx context.Context, opts DMARCOptions, tx *policy.Transaction, m *policy.Message, spfRes SPFResult, recs *dmRecordCache) (DMARCResult, error) {
	res := DMARCResult{Disposition: dmarc.PolicyNone, SPF: spfRes}
	from, err := dkFromDomain(m.Header)
	if err == nil && strings.HasPrefix(from, "[") {
		err = errors.New("From domain is an address literal")
	}
	if err != nil {
		err = fmt.Errorf("auth: DMARC: %w", err)
		res.Result, res.Reason = authres.ResultPermError, dmReason(err)
		return res, err
	}
	res.FromDomain = from
	org := OrganizationalDomain(from)

	lookup := dkLookupTXT(ctx, opts.Resolver, opts.LookupTimeout)
	rec, perr := dmLookup(lookup, from, recs)
	res.PolicyDomain = from
	if rec == nil && !dmIsTemp(perr) && org != from {
		orec, operr := dmLookup(lookup, org, recs)
		switch {
		case orec != nil:
			rec, res.PolicyDomain, perr = orec, org, nil
		case dmIsTemp(operr) || perr == nil:
			perr = operr
		}
	}
	if rec == nil {
		res.PolicyDomain = ""
		switch {
		case dmIsTemp(perr):
			res.Result, res.Reason = authres.ResultTempError, dmReason(perr)
		case perr != nil:
			res.Result, res.Reason = authres.ResultPermError, dmReason(perr)
		default:
			res.Result = authres.ResultNone
		}
		return res, perr
	}
	res.Record = rec
	res.Policy = rec.Policy
	if res.PolicyDomain != from && rec.SubdomainPolicy != "" {
		res.Policy = rec.SubdomainPolicy
	}

	// SPF: the identity is MAIL FROM, or HELO for a null sender. No
	// result (SPF not checked) counts as none: nothing aligned.
	usable := spfRes.Identity != "helo" || tx == nil || tx.From.IsNull()
	if usable && spfRes.Result == SPFPass && dmAligned(spfRes.Domain, from, org, rec.SPFAlignment) {
		res.SPFAligned = true
	}
	// DKIM: any passing signature with an aligned d=.
	var dkimResults []DKIMResult
	if tx != nil {
		dkimResults, _ = DKIMResultsKey.Get(tx)
	}
	for _, d := range dkimResults {
		if d.Result == authres.ResultPass && dmAligned(d.Domain, from, org, rec.DKIMAlignment) {
			res.DKIMAligned, res.DKIMDomain = true, d.Domain
			break
		}
	}
	if res.SPFAligned || res.DKIMAligned {
		res.Result = authres.ResultPass
		return res, nil
	}
	res.Result = authres.ResultFail
	res.Disposition = res.Policy
	if rec.Percent != nil && *rec.Percent < 100 && res.Policy != dmarc.PolicyNone {
		if opts.Rand(100) >= *rec.Percent {
			if res.Policy == dmarc.PolicyReject {
				res.Disposition = dmarc.PolicyQuarantine
			} else {
				res.Disposition = dmarc.PolicyNone
			}
		}
	}
	return res, nil
}

// OrganizationalDomain returns the organizational domain of domain (RFC
// 7489 section 3.2): the public suffix plus one label. A domain that is
// itself a public suffix is its own organizational domain.
func OrganizationalDomain(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	o, err := publicsuffix.EffectiveTLDPlusOne(domain)
	if err != nil {
		return domain
	}
	return o
}

// dmAligned reports whether an authenticated domain is aligned with the
// From domain in mode (RFC 7489 section 3.1). fromOrg is the organizational
// domain of from, computed once by the caller for every check.
func dmAligned(authDomain, from, fromOrg string, mode dmarc.AlignmentMode) bool {
	authDomain = dmDomainOf(authDomain)
	if authDomain == "" || from == "" {
		return false
	}
	if mode == dmarc.AlignmentStrict {
		return authDomain == from
	}
	return OrganizationalDomain(authDomain) == fromOrg
}

// errDMARCTemp marks a temporary lookup failure.
type errDMARCTemp struct{ err error }

func (e errDMARCTemp) Error() string { return "auth: DMARC lookup: " + e.err.Error() }
func (e errDMARCTemp) Unwrap() error { return e.err }

func dmIsTemp(err error) bool {
	var t errDMARCTemp
	return errors.As(err, &t)
}

// dmLookup fetches and parses the DMARC record of domain. It returns (nil,
// nil) when there is none (no name, no TXT, no record starting with
// v=DMARC1, or several: RFC 7489 section 6.6.3), an errDMARCTemp for a
// temporary failure, and a plain error when the only record is invalid.
// cache (nil: none) keeps the records parsed before.
func dmLookup(lookup func(string) ([]string, error), domain string, cache *dmRecordCache) (*dmarc.Record, error) {
	txts, err := lookup("_dmarc." + domain)
	if err != nil {
		// lookup classifies with dnserr: REFUSED and SERVFAIL are
		// temporary, as they are for SPF and DKIM.
		if dnserr.IsNotFound(err) {
			return nil, nil
		}
		return nil, errDMARCTemp{err}
	}
	var recs []string
	for _, t := range txts {
		if dmIsDMARCRecord(t) {
			recs = append(recs, t)
		}
	}
	if len(recs) != 1 {
		return nil, nil
	}
	if rec := cache.get(recs[0]); rec != nil {
		return rec, nil
	}
	rec, err := dmarc.Parse(recs[0])
	if err != nil {
		return nil, fmt.Errorf("auth: DMARC record of %s: %w", domain, err)
	}
	cache.put(recs[0], rec)
	return rec, nil
}

// dmRecordCache keeps DMARC records parsed (dmarc.Parse) before, by their
// text, as dkKeyCache keeps DKIM keys: the record is still looked up for
// every message, only the parse is saved. Records that do not parse are not
// kept. get returns a copy, since the record goes out in DMARCResult, where
// a rule may change it.
type dmRecordCache struct {
	mu   sync.Mutex
	recs map[string]*dmarc.Record
}

// maxDMARCRecords bounds a dmRecordCache (past it, it starts over);
// maxDMARCRecord is the longest record kept.
const (
	maxDMARCRecords = 1024
	maxDMARCRecord  = 2 << 10
)

func (rc *dmRecordCache) get(txt string) *dmarc.Record {
	if rc == nil {
		return nil
	}
	rc.mu.Lock()
	rec := rc.recs[txt]
	rc.mu.Unlock()
	if rec == nil {
		return nil
	}
	return dmCopyRecord(rec)
}

func (rc *dmRecordCache) put(txt string, rec *dmarc.Record) {
	if rc == nil || len(txt) > maxDMARCRecord {
		return
	}
	rec = dmCopyRecord(rec) // the caller's goes out in a result
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.recs == nil || len(rc.recs) >= maxDMARCRecords {
		rc.recs = make(map[string]*dmarc.Record)
	}
	rc.recs[txt] = rec
}

// dmCopyRecord returns a copy of rec that shares nothing with it (nil
// slices stay nil).
func dmCopyRecord(rec *dmarc.Record) *dmarc.Record {
	c := *rec
	if rec.Percent != nil {
		p := *rec.Percent
		c.Percent = &p
	}
	c.ReportFormat = slices.Clone(rec.ReportFormat)
	c.ReportURIAggregate = slices.Clone(rec.ReportURIAggregate)
	c.ReportURIFailure = slices.Clone(rec.ReportURIFailure)
	return &c
}

// dmIsDMARCRecord reports whether a TXT string starts with the v=DMARC1 tag.
func dmIsDMARCRecord(t string) bool {
	t = strings.TrimLeft(t, " \t")
	name, rest, ok := strings.Cut(t, "=")
	if !ok || strings.TrimSpace(name) != "v" {
		return false
	}
	v, _, _ := strings.Cut(rest, ";")
	return strings.TrimSpace(v) == "DMARC1"
}

// dmRecord adds the Authentication-Results field of the DMARC rule.
func dmRecord(tx *policy.Transaction, m *policy.Message, authservID string, res DMARCResult) {
	var parts []string
	if spfIn := res.SPF; spfIn.Result != "" {
		s := &authres.SPFResult{Value: spfIn.Result.authres()}
		// The domain may be the client's HELO name as it was sent (SPF
		// gives none for a malformed one): only a well-formed domain is
		// written, so no client-chosen ";" or quote reaches our field.
		if d, err := policy.NormalizeDomain(spfIn.Domain); err == nil && d == spfIn.Domain && !strings.HasPrefix(d, "[") {
			if spfIn.Identity == "helo" {
				s.Helo = d
			} else {
				s.From = d
			}
		}
		parts = append(parts, strings.TrimPrefix(FormatAuthResults("", s), "; "))
	}
	clause := "dmarc=" + string(res.Result)
	if res.Record != nil {
		clause += " (p=" + string(res.Policy) + " dis=" + string(res.Disposition) + ")"
	}
	if res.Reason != "" {
		clause += ` reason="` + dmQuoteEscaper.Replace(res.Reason) + `"`
	}
	if res.FromDomain != "" {
		clause += " header.from=" + res.FromDomain
	}
	parts = append(parts, clause)
	arAddValue(tx, m.Header, authservID+"; "+strings.Join(parts, "; "))
}

// dmQuoteEscaper escapes a reason= value for a quoted-string.
var dmQuoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// dmReason is the reason= text of a temperror or permerror caused by err:
// short, and without the address of our DNS server that a *net.DNSError
// carries.
func dmReason(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		return "DNS lookup of " + strings.TrimSuffix(de.Name, ".") + " failed: " + de.Err
	}
	return strings.TrimPrefix(err.Error(), "auth: ")
}

// dmAddressParser parses From values leniently as to charsets: an unknown
// charset in a display name must not hide the address.
var dmAddressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// dmParseFrom returns the normalized domains of the addresses of a From
// field value.
func dmParseFrom(v string) ([]string, error) {
	list, err := dmAddressParser.ParseList(v)
	if err != nil {
		return nil, fmt.Errorf("unparsable From: %w", err)
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		i := strings.LastIndexByte(a.Address, '@')
		if i < 0 {
			return nil, fmt.Errorf("From address %q without domain", a.Address)
		}
		d, err := policy.NormalizeDomain(a.Address[i+1:])
		if err != nil {
			return nil, fmt.Errorf("From domain: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}
