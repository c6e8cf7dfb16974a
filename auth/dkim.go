package auth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// MinRSAKeyBits is the smallest RSA key LoadDKIMKey and NewDKIMSigner
// accept (RFC 8301 requires verifiers to accept 1024 bits but signers
// should use at least 2048).
const MinRSAKeyBits = 2048

// dkSigField is the name of the DKIM signature field.
const dkSigField = "DKIM-Signature"

// defaultDKIMHeaders is the list DefaultDKIMHeaders returns a copy of;
// never changed.
var defaultDKIMHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"In-Reply-To", "References", "Message-ID", "Sender",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"Content-ID", "Content-Description",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

// DefaultDKIMHeaders returns the header fields a DKIMSigner signs when its
// Headers is nil (RFC 6376 section 5.4.1's list), in a new slice the
// caller may change, for example to build a list of its own from it. Each
// field is signed as many times as it occurs; From is also oversigned
// (listed once more than it occurs), so a second From field added in
// transit breaks the signature.
func DefaultDKIMHeaders() []string { return slices.Clone(defaultDKIMHeaders) }

// LoadDKIMKey reads a private key from a PEM file: RSA in PKCS#1 ("RSA
// PRIVATE KEY") or PKCS#8 ("PRIVATE KEY") form, of at least MinRSAKeyBits,
// or Ed25519 in PKCS#8 form.
func LoadDKIMKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: DKIM key: %w", err)
	}
	k, err := ParseDKIMKey(b)
	if err != nil {
		return nil, fmt.Errorf("auth: DKIM key %s: %w", path, err)
	}
	return k, nil
}

// ParseDKIMKey parses a PEM-encoded private key as LoadDKIMKey does.
func ParseDKIMKey(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q (want RSA PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, err
	}
	return dkCheckKey(key)
}

func dkCheckKey(key any) (crypto.Signer, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSAKeyBits {
			return nil, fmt.Errorf("RSA key of %d bits is too small (minimum %d)", bits, MinRSAKeyBits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	case *ed25519.PrivateKey:
		return *k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA or Ed25519)", key)
}

// DKIMSigner signs messages for one domain with one selector and key.
// Build it with NewDKIMSigner; the exported fields may be changed before
// first use, never after. It is safe for concurrent use.
type DKIMSigner struct {
	Domain   string        // the d= tag: the signing domain, normalized
	Selector string        // the s= tag
	Key      crypto.Signer // RSA (2048+ bits) or Ed25519

	// Headers lists the fields to sign when present; nil means
	// DefaultDKIMHeaders(). From is always signed and oversigned.
	Headers []string

	// Expiration, when positive, sets x= to the signing time plus it.
	Expiration time.Duration
}

// NewDKIMSigner returns a signer for domain and selector with key (from
// LoadDKIMKey). Canonicalization is relaxed/relaxed and the hash SHA-256.
func NewDKIMSigner(domain, selector string, key crypto.Signer) (*DKIMSigner, error) {
	d, err := policy.NormalizeDomain(domain)
	if err != nil || strings.HasPrefix(d, "[") {
		return nil, fmt.Errorf("auth: DKIM signing domain %q: invalid", domain)
	}
	if selector == "" || strings.ContainsAny(selector, "; \t\r\n=") {
		return nil, fmt.Errorf("auth: DKIM selector %q: invalid", selector)
	}
	if key == nil {
		return nil, errors.New("auth: DKIM signer needs a key")
	}
	k, err := dkCheckKey(key)
	if err != nil {
		return nil, fmt.Errorf("auth: DKIM key: %w", err)
	}
	return &DKIMSigner{Domain: d, Selector: selector, Key: k}, nil
}

// DNSName returns the name of the key's TXT record:
// "<selector>._domainkey.<domain>".
func (s *DKIMSigner) DNSName() string { return s.Selector + "._domainkey." + s.Domain }

// DNSRecord returns the TXT record to publish at DNSName for the signer's
// key ("v=DKIM1; k=rsa; p=...").
func (s *DKIMSigner) DNSRecord() string {
	switch pub := s.Key.Public().(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	default:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return ""
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
}

// appendHeaderKeys appends to keys the h= list for the header fields:
// every configured field once per occurrence, and From once more than it
// occurs. Names compare as strings.ToLower makes them (dkLowerEqual),
// with no map and, for ASCII names, no allocation. A configured name is
// checked against the earlier ones only when it has fields: names that
// lowercase alike have the same fields, so the earlier one is then in keys.
func (s *DKIMSigner) appendHeaderKeys(keys []string, fields *dkNames) []string {
	names := s.Headers
	if names == nil {
		names = defaultDKIMHeaders
	}
	for range fields.count("from", true) + 1 {
		keys = append(keys, "From")
	}
	first := len(keys)
	for _, n := range names {
		nASCII := dkIsASCII(n)
		if dkLowerEqual(n, nASCII, "from", true) {
			continue
		}
		c := fields.count(n, nASCII)
		if c == 0 || slices.ContainsFunc(keys[first:], func(prev string) bool {
			return dkLowerEqual(prev, dkIsASCII(prev), n, nASCII)
		}) {
			continue
		}
		for range c {
			keys = append(keys, n)
		}
	}
	return keys
}

// dkSignScratch holds the buffers one signature is built in, pooled so
// that signing allocates little more than the field it returns.
type dkSignScratch struct {
	names dkNames
	keys  []string
	field []byte // the DKIM-Signature field with an empty b=
	canon []byte // its relaxed form
	hval  []byte // the h= value
	hh    hash.Hash
	sum   [sha256.Size]byte
}

var dkSignPool = sync.Pool{New: func() any { return &dkSignScratch{hh: sha256.New()} }}

// Sign computes a DKIM-Signature for m as it is now (current header, body
// streamed from storage) and returns the complete field, ending in CRLF,
// ready for m.Header.AddRaw. The bytes signed are those m.Reader gives,
// which are the bytes transports send.
//
// The body is hashed through fixed buffers (dkBodyHasher), so signing a
// message of any size allocates a few KiB; the result is the signature
// go-msgauth would make (its verifier and dkimpy check ours in the tests).
func (s *DKIMSigner) Sign(ctx context.Context, m *policy.Message) ([]byte, error) {
	return s.sign(ctx, m, time.Now())
}

// sign is Sign at the time now (t= and x=), so tests can compare
// signatures byte for byte.
func (s *DKIMSigner) sign(ctx context.Context, m *policy.Message, now time.Time) ([]byte, error) {
	keyAlgo := "rsa-sha256"
	hashOpt := crypto.Hash(crypto.SHA256)
	switch s.Key.Public().(type) {
	case *rsa.PublicKey:
	case ed25519.PublicKey:
		// Ed25519 signs the SHA-256 of the header itself (RFC 8463).
		keyAlgo, hashOpt = "ed25519-sha256", crypto.Hash(0)
	default:
		return nil, fmt.Errorf("auth: DKIM: unsupported key type %T", s.Key.Public())
	}

	sc := dkSignPool.Get().(*dkSignScratch)
	defer func() {
		clear(sc.keys) // hold no caller's strings in the pool
		sc.names.reset()
		dkSignPool.Put(sc)
	}()
	bh, err := dkHashBodyInto(ctx, m.Body(), sc.sum[:0])
	if err != nil {
		return nil, fmt.Errorf("auth: DKIM signing: %w", err)
	}
	var bh64 [44]byte // base64 of a SHA-256
	base64.StdEncoding.Encode(bh64[:], bh)
	fields := m.Header.Fields()
	sc.names.load(fields, false)
	sc.keys = s.appendHeaderKeys(sc.keys[:0], &sc.names)
	sc.hval = sc.hval[:0]
	for i, k := range sc.keys {
		if i > 0 {
			sc.hval = append(sc.hval, ':')
		}
		sc.hval = append(sc.hval, k...)
	}
	var tbuf, xbuf [20]byte

	// The tags in name order, as go-msgauth writes them.
	f := dkSigFieldWriter{buf: append(sc.field[:0], dkSigField+":"...)}
	f.line = len(f.buf)
	f.tag("a", []byte(keyAlgo))
	f.tag("bh", bh64[:])
	f.tag("c", []byte("relaxed/relaxed"))
	f.tag("d", []byte(s.Domain))
	f.tag("h", sc.hval)
	f.tag("s", []byte(s.Selector))
	f.tag("t", strconv.AppendInt(tbuf[:0], now.Unix(), 10))
	f.tag("v", []byte("1"))
	if s.Expiration > 0 {
		f.tag("x", strconv.AppendInt(xbuf[:0], now.Add(s.Expiration).Unix(), 10))
	}
	f.buf = append(f.buf, "\r\n"...)
	tagsEnd := len(f.buf)
	f.buf = dkAppendB(f.buf, "")
	sc.field = f.buf

	sc.hh.Reset()
	dkHashHeaders(sc.hh, fields, sc.keys, dkAppendRelaxedHeader)
	sc.canon = dkAppendRelaxedHeader(sc.canon[:0], sc.field)
	sc.hh.Write(sc.canon[:len(sc.canon)-2]) // without its CRLF
	sig, err := s.Key.Sign(rand.Reader, sc.hh.Sum(sc.sum[:0]), hashOpt)
	if err != nil {
		return nil, fmt.Errorf("auth: DKIM signing: %w", err)
	}
	b64 := base64.StdEncoding.EncodedLen(len(sig))
	out := make([]byte, tagsEnd, tagsEnd+b64+3*(b64/75+2)+5)
	copy(out, sc.field[:tagsEnd])
	out = dkAppendB(out, base64.StdEncoding.EncodeToString(sig))
	return out, nil
}

// dkCtxReader stops reading once ctx is done, so a rule's deadline bounds
// the work on a large message.
type dkCtxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r dkCtxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// dkFromDomain returns the domain of the single address of the From field
// of h, normalized. It fails when there is not exactly one From field with
// exactly one address.
func dkFromDomain(h *policy.Header) (string, error) {
	froms := h.Values("From")
	if len(froms) != 1 {
		return "", fmt.Errorf("%d From fields", len(froms))
	}
	addrs, err := dmParseFrom(froms[0])
	if err != nil {
		return "", err
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("%d From addresses", len(addrs))
	}
	return addrs[0], nil
}

// dkInDomains reports whether domain is one of domains (normalized).
func dkInDomains(domain string, domains []string) bool {
	for _, d := range domains {
		if nd, err := policy.NormalizeDomain(d); err == nil && nd == domain {
			return true
		}
	}
	return false
}

// dkUnder reports whether from is domain or a subdomain of it.
func dkUnder(from, domain string) bool {
	return from == domain || strings.HasSuffix(from, "."+domain)
}

// dkShouldSign decides whether signer signs the message: its From header
// domain must be the signer's domain or a subdomain of it, and the
// envelope sender must be local (in localDomains, or the signer's domain
// when none are given); a null sender counts as local when the From
// header is ours and the transaction is our own bounce (see dkOwnBounce).
func dkShouldSign(signer *DKIMSigner, localDomains []string, tx *policy.Transaction, m *policy.Message) (bool, string) {
	from, err := dkFromDomain(m.Header)
	if err != nil {
		return false, "From header: " + err.Error()
	}
	if !dkUnder(from, signer.Domain) {
		return false, "From domain " + from + " is not " + signer.Domain
	}
	if tx == nil || tx.From.IsNull() {
		if dkOwnBounce(tx) {
			return true, ""
		}
		return false, "null sender from an unauthenticated client"
	}
	if dkSenderLocal(signer, localDomains, tx) {
		return true, ""
	}
	return false, "sender " + tx.From.String() + " is not local"
}

// dkOwnBounce reports whether a null-sender transaction is one this server
// may sign: made here (the queue's bounces carry no client address) or sent
// by an authenticated client. A null sender from any other client is
// anyone's: signing its message, whose From may well be ours, would give
// a forger our signature.
func dkOwnBounce(tx *policy.Transaction) bool {
	return tx == nil || tx.Conn == nil || !tx.Conn.Remote.IsValid() || tx.Conn.Authenticated()
}

func dkSenderLocal(signer *DKIMSigner, localDomains []string, tx *policy.Transaction) bool {
	if tx == nil || tx.From.IsNull() || tx.From.IsLiteral() {
		return false
	}
	if len(localDomains) == 0 {
		return dkUnder(tx.From.Domain, signer.Domain)
	}
	return dkInDomains(tx.From.Domain, localDomains)
}

// dkAlreadySigned reports whether h carries a DKIM-Signature with the
// signer's d= and s= (a postq rule that runs again after a restart must not
// sign twice).
func dkAlreadySigned(signer *DKIMSigner, h *policy.Header) bool {
	for _, v := range h.Values(dkSigField) {
		tags, err := ParseDKIMTags(v)
		if err != nil {
			continue
		}
		if strings.EqualFold(tags["d"], signer.Domain) && tags["s"] == signer.Selector {
			return true
		}
	}
	return false
}

// SignDKIM returns a postq rule that signs outgoing mail with signer and
// adds the DKIM-Signature field at the top of the header.
//
// A message is signed when its From header has exactly one address, in the
// signer's domain or a subdomain of it (so the signature aligns for DMARC),
// and its envelope sender is local: in one of localDomains (the signer's
// domain and its subdomains when none are given), or the null sender of our
// own bounces (a transaction without a client address, as the queue makes
// them) or of an authenticated client. A null sender from any other client
// is never signed. Other messages pass untouched. The rule relies on the relay
// rules to refuse a local envelope sender from an unauthenticated outside
// client; with them, "local sender" means "our user".
//
// A message already carrying a signature with the signer's d= and s= is not
// signed again. A failure (the spool unreadable, the context ended) gives
// Fail, so the queue retries later; the rule never denies.
func SignDKIM(signer *DKIMSigner, localDomains ...string) policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if ok, _ := dkShouldSign(signer, localDomains, tx, m); !ok {
			return policy.Next()
		}
		if dkAlreadySigned(signer, m.Header) {
			return policy.Next()
		}
		sig, err := signer.Sign(ctx, m)
		if err != nil {
			return policy.Fail(err)
		}
		m.Header.AddRaw(sig)
		return policy.Next()
	}
}

// SignOrVerifyDKIM is the combined form: when the envelope sender is local
// (in localDomains, or the signer's domain when none are given) the message
// is signed as SignDKIM does; otherwise its signatures are verified as
// VerifyDKIM(verify) does.
func SignOrVerifyDKIM(signer *DKIMSigner, verify DKIMVerifyOptions, localDomains ...string) policy.MessageRule {
	sign := SignDKIM(signer, localDomains...)
	check := VerifyDKIM(verify)
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if dkSenderLocal(signer, localDomains, tx) {
			return sign(ctx, tx, m)
		}
		if tx != nil && tx.From.IsNull() {
			if ok, _ := dkShouldSign(signer, localDomains, tx, m); ok {
				return sign(ctx, tx, m)
			}
		}
		return check(ctx, tx, m)
	}
}

// TXTResolver is the DNS the DKIM and DMARC rules need. *net.Resolver and
// every policy.Resolver satisfy it.
type TXTResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// DefaultLookupTimeout bounds one DNS lookup of the DKIM and DMARC rules
// when their options leave LookupTimeout zero.
const DefaultLookupTimeout = 10 * time.Second

// dkLookupTXT returns the TXT lookup of the DKIM and DMARC rules: each
// lookup runs under ctx and timeout, and every error comes back classified
// by dnserr.Classify, as the SPF rule's are: NXDOMAIN and NODATA are "not
// found" (permerror for a DKIM key, no record for DMARC), everything else,
// REFUSED and SERVFAIL included, is temporary (temperror). dkQueryKey asks
// the error's Temporary method, as go-msgauth does.
func dkLookupTXT(ctx context.Context, r TXTResolver, timeout time.Duration) func(string) ([]string, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	if timeout <= 0 {
		timeout = DefaultLookupTimeout
	}
	return func(name string) ([]string, error) {
		lctx, cancel := lazyctx.WithTimeout(ctx, timeout) // no timer for a cache hit
		defer cancel()
		fqdn := name
		if !strings.HasSuffix(fqdn, ".") {
			fqdn += "."
		}
		txts, err := r.LookupTXT(lctx, fqdn)
		return txts, dnserr.Classify(lctx, name, err)
	}
}

// DKIMResult is the outcome of verifying one DKIM-Signature. It
// round-trips through encoding/json, so it survives queueing (see
// policy.Key).
type DKIMResult struct {
	// Result is the RFC 8601 result: pass, fail (bad signature or body
	// hash), permerror (unusable signature or key: syntax, no key, revoked,
	// expired), temperror (key lookup failed for now), or none (the message
	// had no signature; then the other fields are empty).
	Result     authres.ResultValue
	Domain     string // d=
	Selector   string // s=
	Identifier string // i=, or "@"+d= when absent
	Algorithm  string // a=
	Signature  string // the first 12 characters of b=, for header.b
	// Reason is why it did not pass, as written in reason= of
	// Authentication-Results; "" on pass and none.
	Reason string
}

// DKIMResultsKey holds the DKIM results of a message, one per signature
// verified, for later rules such as CheckDMARC.
const DKIMResultsKey policy.Key[[]DKIMResult] = "auth.dkim"

// DKIMVerifyOptions configure VerifyDKIM.
type DKIMVerifyOptions struct {
	// Resolver looks up the keys; nil means net.DefaultResolver.
	Resolver TXTResolver
	// LookupTimeout bounds each key lookup (default DefaultLookupTimeout);
	// the rule's context bounds them all.
	LookupTimeout time.Duration
	// AuthServID names this server in Authentication-Results; "" means
	// DefaultAuthServID().
	AuthServID string
	// MaxVerifications caps the signatures verified (default 5); the
	// others are ignored, as RFC 6376 section 6.1 allows.
	MaxVerifications int
	// DenyOnFail denies (550 5.7.20) a message that has signatures of
	// which none passed and at least one failed or was unusable. Off by
	// default: results are recorded and DMARC decides.
	DenyOnFail bool
	// Logger receives one debug line per message; nil means slog.Default().
	Logger *slog.Logger
}

// VerifyDKIM returns a preq or postq rule that verifies the DKIM signatures
// of incoming mail (at most MaxVerifications), records every signature's
// result in one Authentication-Results field (dkim=none when there is none)
// and stores them under DKIMResultsKey.
//
// Before that it removes Authentication-Results fields that claim our
// authserv-id but come from outside (RFC 8601 section 5).
//
// It never denies unless DenyOnFail is set; a failure of ours (the message
// unreadable, the context ended while reading) gives Fail.
//
// The body is read once for all signatures and hashed through fixed
// buffers: verifying a message of any size allocates a few KiB. Results
// and reasons are go-msgauth's (a differential test holds them equal); as
// there, a signature with l= fails, since the body after l= is unsigned.
//
// The key record is looked up for every signature (through Resolver, and so
// its cache); the rule keeps the keys it parsed, by the record's text (at
// most 1024 records of up to 4 KiB), so that a record seen before is not
// parsed again.
func VerifyDKIM(opts DKIMVerifyOptions) policy.MessageRule {
	if opts.AuthServID == "" {
		opts.AuthServID = DefaultAuthServID()
	}
	if opts.MaxVerifications <= 0 {
		opts.MaxVerifications = 5
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	keys := &dkKeyCache{}
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		arStripForged(tx, m.Header, opts.AuthServID)
		results, err := verifyDKIM(ctx, opts, m, keys)
		if err != nil {
			return policy.Fail(err)
		}
		if tx != nil {
			DKIMResultsKey.Set(tx, results)
		}
		value, ok := dkFormatResults(opts.AuthServID, results)
		if !ok {
			ar := make([]authres.Result, 0, len(results))
			for _, r := range results {
				ar = append(ar, r.authres())
			}
			value = FormatAuthResults(opts.AuthServID, ar...)
		}
		arAddValue(tx, m.Header, value)
		if log.Enabled(ctx, slog.LevelDebug) {
			attrs := []any{}
			for _, r := range results {
				attrs = append(attrs, slog.String("dkim."+r.Domain, string(r.Result)))
			}
			log.DebugContext(ctx, "dkim verified", attrs...)
		}
		if opts.DenyOnFail && dkDeserveDeny(results) {
			return policy.Deny(550, "5.7.20", "No passing DKIM signature found")
		}
		return policy.Next()
	}
}

func dkDeserveDeny(results []DKIMResult) bool {
	failed := false
	for _, r := range results {
		switch r.Result {
		case authres.ResultPass:
			return false
		case authres.ResultFail, authres.ResultPermError:
			failed = true
		}
	}
	return failed
}

// authres returns r as an Authentication-Results result.
func (r DKIMResult) authres() authres.Result {
	if r.Result == authres.ResultNone {
		return &authres.DKIMResult{Value: authres.ResultNone}
	}
	// The tags are the sender's to choose; go-msgauth quotes a value but
	// does not escape a backslash in it, so quotes and backslashes are
	// replaced to keep the field's quoting intact.
	params := map[string]string{
		"header.d": arSafe(r.Domain),
		"header.i": arSafe(r.Identifier),
		"header.s": arSafe(r.Selector),
		"header.a": arSafe(r.Algorithm),
		"header.b": arSafe(r.Signature),
	}
	if r.Reason != "" {
		params["reason"] = arSafe(r.Reason)
	}
	return &authres.GenericResult{Method: "dkim", Value: r.Result, Params: params}
}

// dkStripWS removes SP, HTAB, CR and LF from s. An ASCII string takes a
// byte loop, and one without white space (most tag values) comes back as
// it is, without a copy; any other goes through strings.Map, which also
// turns invalid UTF-8 into U+FFFD when it rebuilds the string, as it
// always did here.
// dkFormatResults returns FormatAuthResults(authservID, the authres() of
// each result), built in one buffer rather than through go-msgauth's
// parameter map, sort and string concatenations, for results other than
// none whose values are ASCII; ok is false for the others, which the caller
// formats with FormatAuthResults. FuzzDKIMFormatResults holds the two
// equal.
func dkFormatResults(authservID string, results []DKIMResult) (string, bool) {
	size := len(authservID)
	for _, r := range results {
		if r.Result == authres.ResultNone {
			return "", false
		}
		for _, v := range [...]string{r.Algorithm, r.Signature, r.Domain, r.Identifier, r.Selector, r.Reason} {
			if !dkIsASCII(v) {
				return "", false
			}
			size += len(v) + 16
		}
	}
	b := make([]byte, 0, size+len(results)*16)
	b = append(b, authservID...)
	for _, r := range results {
		// go-msgauth: "; " method "=" value " ", then the parameters
		// with a value, reason first, the others sorted by name.
		b = append(b, "; dkim="...)
		b = append(b, r.Result...)
		b = append(b, ' ')
		first := true
		if r.Reason != "" {
			b, first = dkAppendParam(b, first, "reason", arSafe(r.Reason), false), false
		}
		for _, p := range [...]struct{ k, v string }{
			{"header.a", r.Algorithm}, {"header.b", r.Signature}, {"header.d", r.Domain},
			{"header.i", r.Identifier}, {"header.s", r.Selector},
		} {
			if p.v != "" {
				b, first = dkAppendParam(b, first, p.k, arSafe(p.v), true), false
			}
		}
	}
	return string(b), true
}

// dkAppendParam appends " "-separated (unless first) k=v as go-msgauth
// formats an ASCII value: a pvalue (pvalue true) of letters, digits and
// the punctuation it leaves bare as it is, else a token as it is, else a
// quoted-string.
func dkAppendParam(b []byte, first bool, k, v string, pvalue bool) []byte {
	if !first {
		b = append(b, ' ')
	}
	b = append(b, k...)
	b = append(b, '=')
	addressLike, quote := pvalue, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("#$%&'*+,./-@[]\\^_`{|}~", c) >= 0) {
			addressLike = false
		}
		if c <= ' ' || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			quote = true
		}
	}
	if addressLike || !quote {
		return append(b, v...)
	}
	b = append(b, '"')
	b = append(b, strings.ReplaceAll(v, `"`, `\"`)...)
	return append(b, '"')
}

func dkStripWS(s string) string {
	ws := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= utf8.RuneSelf:
			return dkStripWSMap(s)
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			ws = true
		}
	}
	if !ws {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			b = append(b, c)
		}
	}
	return string(b)
}

func dkStripWSMap(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

// ParseDKIMTags parses a DKIM tag list (RFC 6376 section 3.2), the value of
// a DKIM-Signature field or of a key record, into a map of tag names to
// values with surrounding white space removed. A duplicate tag or a
// malformed tag-spec is an error (RFC 6376 section 3.2: the signature is
// then invalid).
func ParseDKIMTags(s string) (map[string]string, error) {
	// Sized for the tags (a signature has about ten), bounded against a
	// value made of semicolons.
	tags := make(map[string]string, min(strings.Count(s, ";")+1, 16))
	for rest, more := s, true; more; {
		var spec string
		spec, rest, more = strings.Cut(rest, ";")
		if strings.Trim(spec, " \t\r\n") == "" {
			continue
		}
		name, value, ok := strings.Cut(spec, "=")
		if !ok {
			return tags, fmt.Errorf("auth: DKIM tag-spec %q without '='", spec)
		}
		name = strings.Trim(name, " \t\r\n")
		if name == "" || !dkValidTagName(name) {
			return tags, fmt.Errorf("auth: bad DKIM tag name %q", name)
		}
		if _, dup := tags[name]; dup {
			return tags, fmt.Errorf("auth: duplicate DKIM tag %q", name)
		}
		tags[name] = strings.Trim(value, " \t\r\n")
	}
	return tags, nil
}

func dkValidTagName(n string) bool {
	for i := 0; i < len(n); i++ {
		c := n[i]
		alpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !alpha && (i == 0 || !(c >= '0' && c <= '9' || c == '_')) {
			return false
		}
	}
	return true
}
