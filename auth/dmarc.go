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
	"strings"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/policy"
	"golang.org/x/net/publicsuffix"
)

// SPFInput is the SPF result DMARC evaluates: the result ("pass", "fail",
// ...), the domain that was checked, and which identity it was ("mailfrom"
// or "helo").
type SPFInput struct {
	Result   string
	Domain   string
	Identity string
}

// DMARCResult is the outcome of a DMARC evaluation (RFC 7489).
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

	SPF         SPFInput // the SPF result used, if any
	SPFAligned  bool     // SPF passed for a domain aligned with FromDomain
	DKIMDomain  string   // the d= of the aligned passing signature
	DKIMAligned bool

	Err error // the cause of temperror and permerror
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

	// SPF returns the SPF result to evaluate; nil means: the result the SPF
	// rule left in the transaction, else the spf= result in an
	// Authentication-Results field this server wrote, else the topmost
	// trusted Received-SPF field (after a restart, rule values are gone
	// but headers remain).
	SPF func(tx *policy.Transaction, m *policy.Message) (SPFInput, bool)

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
// DKIM results come from DKIMResultsKey (VerifyDKIM must run first) or,
// after a restart, from Authentication-Results fields this server wrote;
// SPF results as DMARCOptions.SPF describes.
//
// The result is recorded in an Authentication-Results field
// ("dmarc=fail (p=reject dis=reject) header.from=example.com", preceded by
// the spf= result it used when no field of ours recorded it yet) and under
// DMARCResultKey. The verdict, unless Monitor or Decide says otherwise: a
// failing message under p=reject is denied with 550 5.7.1, under
// p=quarantine quarantined, and goes on otherwise; pass, none, temperror
// and permerror go on (see DeferOnTempError and AllowMalformedFrom for the
// exceptions).
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
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		arStripForged(tx, m.Header, opts.AuthServID)
		spfIn, spfFromAR, haveSPF := dmSPF(opts, tx, m)
		res := dmEvaluate(ctx, opts, tx, m, spfIn, haveSPF)
		if tx != nil {
			DMARCResultKey.Set(tx, res)
		}
		dmRecord(tx, m, opts.AuthServID, res, spfIn, haveSPF && !spfFromAR)
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
				return policy.Deny(451, "4.7.0", "DMARC policy lookup failed, try again later").WithErr(res.Err)
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
				return policy.Quarantine(opts.QuarantineQueue)
			}
		}
		return policy.Next()
	}
}

// dmSPF finds the SPF result (see DMARCOptions.SPF). fromAR reports that it
// came from an Authentication-Results field of ours (so it is not recorded
// again).
func dmSPF(opts DMARCOptions, tx *policy.Transaction, m *policy.Message) (in SPFInput, fromAR, ok bool) {
	if opts.SPF != nil {
		in, ok = opts.SPF(tx, m)
		return in, false, ok
	}
	if in, ok = spfFromTransaction(tx); ok {
		return in, false, true
	}
	for _, r := range arOurResults(tx, m.Header, opts.AuthServID) {
		if s, isSPF := r.(*authres.SPFResult); isSPF {
			in = SPFInput{Result: string(s.Value), Identity: "mailfrom", Domain: dmDomainOf(s.From)}
			if s.From == "" {
				in.Identity, in.Domain = "helo", dmDomainOf(s.Helo)
			}
			return in, true, true
		}
	}
	trusted := arTrusted(tx, m.Header)
	for i, f := range m.Header.Fields() {
		if strings.EqualFold(f.Name(), "Received-SPF") && trusted(i, f) {
			if in, ok = dmParseReceivedSPF(f.Value()); ok {
				return in, false, true
			}
		}
	}
	if tx != nil {
		for _, f := range tx.Header.Fields() {
			if strings.EqualFold(f.Name(), "Received-SPF") {
				if in, ok = dmParseReceivedSPF(f.Value()); ok {
					return in, false, true
				}
			}
		}
	}
	return SPFInput{}, false, false
}

// spfFromTransaction reads the SPF result the SPF rule of this package left
// in tx. It is a variable so that the SPF rule's file can wire its key in
// without this file depending on it.
var spfFromTransaction = func(tx *policy.Transaction) (SPFInput, bool) { return SPFInput{}, false }

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

// dmEvaluate computes the DMARC result.
func dmEvaluate(ctx context.Context, opts DMARCOptions, tx *policy.Transaction, m *policy.Message, spfIn SPFInput, haveSPF bool) DMARCResult {
	res := DMARCResult{Disposition: dmarc.PolicyNone}
	from, err := dkFromDomain(m.Header)
	if err == nil && strings.HasPrefix(from, "[") {
		err = errors.New("From domain is an address literal")
	}
	if err != nil {
		res.Result, res.Err = authres.ResultPermError, fmt.Errorf("auth: DMARC: %w", err)
		return res
	}
	res.FromDomain = from
	org := OrganizationalDomain(from)

	lookup := dkLookupTXT(ctx, opts.Resolver, opts.LookupTimeout)
	rec, perr := dmLookup(lookup, from)
	res.PolicyDomain = from
	if rec == nil && !dmIsTemp(perr) && org != from {
		orec, operr := dmLookup(lookup, org)
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
			res.Result, res.Err = authres.ResultTempError, perr
		case perr != nil:
			res.Result, res.Err = authres.ResultPermError, perr
		default:
			res.Result = authres.ResultNone
		}
		return res
	}
	res.Record = rec
	res.Policy = rec.Policy
	if res.PolicyDomain != from && rec.SubdomainPolicy != "" {
		res.Policy = rec.SubdomainPolicy
	}

	// SPF: the identity is MAIL FROM, or HELO for a null sender.
	if haveSPF {
		res.SPF = spfIn
		usable := spfIn.Identity != "helo" || tx == nil || tx.From.IsNull()
		if usable && strings.EqualFold(spfIn.Result, "pass") && dmAligned(spfIn.Domain, from, rec.SPFAlignment) {
			res.SPFAligned = true
		}
	}
	// DKIM: any passing signature with an aligned d=.
	for _, d := range dmDKIM(opts, tx, m) {
		if d.Result == authres.ResultPass && dmAligned(d.Domain, from, rec.DKIMAlignment) {
			res.DKIMAligned, res.DKIMDomain = true, d.Domain
			break
		}
	}
	if res.SPFAligned || res.DKIMAligned {
		res.Result = authres.ResultPass
		return res
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
	return res
}

// dmDKIM returns the DKIM results: from DKIMResultsKey, else from the
// Authentication-Results fields this server wrote.
func dmDKIM(opts DMARCOptions, tx *policy.Transaction, m *policy.Message) []DKIMResult {
	if tx != nil {
		if rs, ok := DKIMResultsKey.Get(tx); ok {
			return rs
		}
	}
	var out []DKIMResult
	for _, r := range arOurResults(tx, m.Header, opts.AuthServID) {
		if d, ok := r.(*authres.DKIMResult); ok {
			out = append(out, DKIMResult{Result: d.Value, Domain: dmDomainOf(d.Domain), Identifier: d.Identifier})
		}
	}
	return out
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
// From domain in mode (RFC 7489 section 3.1).
func dmAligned(authDomain, from string, mode dmarc.AlignmentMode) bool {
	authDomain = dmDomainOf(authDomain)
	if authDomain == "" || from == "" {
		return false
	}
	if mode == dmarc.AlignmentStrict {
		return authDomain == from
	}
	return OrganizationalDomain(authDomain) == OrganizationalDomain(from)
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
func dmLookup(lookup func(string) ([]string, error), domain string) (*dmarc.Record, error) {
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
	rec, err := dmarc.Parse(recs[0])
	if err != nil {
		return nil, fmt.Errorf("auth: DMARC record of %s: %w", domain, err)
	}
	return rec, nil
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
func dmRecord(tx *policy.Transaction, m *policy.Message, authservID string, res DMARCResult, spfIn SPFInput, withSPF bool) {
	var parts []string
	if withSPF {
		s := &authres.SPFResult{Value: authres.ResultValue(strings.ToLower(spfIn.Result))}
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
	if reason := dmReason(res); reason != "" {
		clause += ` reason="` + dmQuoteEscaper.Replace(reason) + `"`
	}
	if res.FromDomain != "" {
		clause += " header.from=" + res.FromDomain
	}
	parts = append(parts, clause)
	arAddValue(tx, m.Header, authservID+"; "+strings.Join(parts, "; "))
}

// dmQuoteEscaper escapes a reason= value for a quoted-string.
var dmQuoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// dmReason is the reason= text of a temperror or permerror: short, and
// without the address of our DNS server that a *net.DNSError carries.
func dmReason(res DMARCResult) string {
	if res.Err == nil || (res.Result != authres.ResultTempError && res.Result != authres.ResultPermError) {
		return ""
	}
	var de *net.DNSError
	if errors.As(res.Err, &de) {
		return "DNS lookup of " + strings.TrimSuffix(de.Name, ".") + " failed: " + de.Err
	}
	return strings.TrimPrefix(res.Err.Error(), "auth: ")
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

// dmParseReceivedSPF reads the result and the checked identity from a
// Received-SPF value (RFC 7208 section 9.1) with ParseReceivedSPF:
//
//	pass (comment) client-ip=192.0.2.1; envelope-from="a@example.com"; helo=mx.example.com; identity=mailfrom; receiver=mx.example.net;
//
// A check of an empty envelope-from (or one without a domain) was one of
// the HELO name (RFC 7208 section 2.4), which is what DMARC must align; a
// field with another identity, or naming no domain, gives nothing.
func dmParseReceivedSPF(v string) (SPFInput, bool) {
	r, err := ParseReceivedSPF(v)
	if err != nil {
		return SPFInput{}, false
	}
	in := SPFInput{Result: string(r.Result), Identity: r.Identity, Domain: r.Domain}
	switch r.Identity {
	case "helo":
	case "mailfrom":
		if _, ok := senderDomain(r.Sender); !ok {
			in.Identity = "helo"
		}
	default:
		return SPFInput{}, false
	}
	return in, in.Domain != ""
}
