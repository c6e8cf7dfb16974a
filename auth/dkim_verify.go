package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/mtakit/mtakit/policy"
)

// The verifier follows go-msgauth's (v0.7.0) checks, in its order and with
// its reasons, but hashes the body through dkBodyHasher: go-msgauth's
// canonicalizers copy every Write twice, 100 MiB of garbage per signature
// of a 50 MiB message. The body is read once for all signatures.

// dkVerifyError is why a signature did not pass: its result (fail,
// permerror, temperror) and the reason.
type dkVerifyError struct {
	result authres.ResultValue
	reason string
}

func (e *dkVerifyError) Error() string { return "dkim: " + e.reason }

func dkPerm(reason string) error { return &dkVerifyError{authres.ResultPermError, reason} }
func dkTemp(reason string) error { return &dkVerifyError{authres.ResultTempError, reason} }
func dkFail(reason string) error { return &dkVerifyError{authres.ResultFail, reason} }

// dkSigCheck is one signature on its way through verification.
type dkSigCheck struct {
	res      DKIMResult
	err      error  // why it did not pass
	raw      string // the field as received
	tags     map[string]string
	keys     []string // h=
	relaxedH bool
	relaxedB bool
	bodyHash []byte // bh=
	sig      []byte // b=
	alg      crypto.Hash
	pub      crypto.PublicKey
	body     *dkBodyHasher
}

// verifyDKIM verifies m's signatures (the first MaxVerifications, all
// when it is not positive). It returns an error only for our own failures
// (reading the message).
// verifyDKIM verifies m's signatures; keys (nil: none) keeps the RSA keys
// parsed before.
func verifyDKIM(ctx context.Context, opts DKIMVerifyOptions, m *policy.Message, keys *dkKeyCache) ([]DKIMResult, error) {
	fields := m.Header.Fields()
	var checks []*dkSigCheck
	for _, f := range fields {
		if !strings.EqualFold(strings.TrimSpace(f.Name()), dkSigField) {
			continue
		}
		if opts.MaxVerifications > 0 && len(checks) == opts.MaxVerifications {
			break
		}
		checks = append(checks, &dkSigCheck{raw: dkCRLFLines(f.Raw)})
	}
	if len(checks) == 0 {
		return []DKIMResult{{Result: authres.ResultNone}}, nil
	}
	lookup := dkLookupTXT(ctx, opts.Resolver, opts.LookupTimeout)
	var pending []*dkSigCheck
	for _, c := range checks {
		if err := c.prepare(lookup, keys); err != nil {
			c.err = err
			continue
		}
		pending = append(pending, c)
	}
	if len(pending) > 0 {
		if err := dkHashBodies(ctx, m.Body(), pending); err != nil {
			return nil, fmt.Errorf("auth: DKIM verification: reading message: %w", err)
		}
		for _, c := range pending {
			c.err = c.finish(fields)
		}
	}
	out := make([]DKIMResult, 0, len(checks))
	for _, c := range checks {
		r := c.res
		r.Domain = strings.ToLower(r.Domain)
		var ve *dkVerifyError
		switch {
		case c.err == nil:
			r.Result = authres.ResultPass
		case errors.As(c.err, &ve):
			r.Result, r.Reason = ve.result, ve.reason
		default:
			r.Result, r.Reason = authres.ResultFail, strings.TrimPrefix(c.err.Error(), "dkim: ")
		}
		out = append(out, r)
	}
	return out, nil
}

// dkHashBodies reads body once and hashes it for every check.
func dkHashBodies(ctx context.Context, body io.Reader, checks []*dkSigCheck) (err error) {
	for _, c := range checks {
		c.body = newDKBodyHasher(sha256.New(), c.relaxedB, -1)
	}
	defer func() {
		for _, c := range checks {
			if c.body != nil && err != nil {
				c.body.free()
				c.body = nil
			}
		}
	}()
	bufp := dkReadBufPool.Get().(*[]byte)
	defer dkReadBufPool.Put(bufp)
	r := dkCtxReader{ctx, body}
	for {
		n, rerr := r.Read(*bufp)
		for _, c := range checks {
			c.body.Write((*bufp)[:n])
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// prepare checks everything but the hashes: the tags, the key (looked up
// with lookup) and the algorithms.
func (c *dkSigCheck) prepare(lookup func(string) ([]string, error), keys *dkKeyCache) error {
	_, value, _ := strings.Cut(c.raw, ":")
	tags, err := ParseDKIMTags(value)
	if err != nil {
		return dkPerm("malformed signature tags: " + strings.TrimPrefix(err.Error(), "auth: "))
	}
	c.tags = tags
	if tags["v"] != "1" {
		return dkPerm("incompatible signature version")
	}
	c.res.Domain = dkStripWS(tags["d"])
	c.res.Selector = dkStripWS(tags["s"])
	c.res.Algorithm = dkStripWS(tags["a"])
	b := dkStripWS(tags["b"])
	if len(b) > 12 {
		b = b[:12]
	}
	c.res.Signature = b
	for _, tag := range []string{"v", "a", "b", "bh", "d", "h", "s"} {
		if _, ok := tags[tag]; !ok {
			return dkPerm("signature missing required tag")
		}
	}
	if i, ok := tags["i"]; ok {
		c.res.Identifier = dkStripWS(i)
		if !strings.HasSuffix(c.res.Identifier, "@"+c.res.Domain) && !strings.HasSuffix(c.res.Identifier, "."+c.res.Domain) {
			return dkPerm("domain mismatch")
		}
	} else {
		c.res.Identifier = "@" + c.res.Domain
	}
	h := tags["h"]
	c.keys = make([]string, 0, strings.Count(h, ":")+1)
	for rest, more := h, true; more; {
		var k string
		k, rest, more = strings.Cut(rest, ":")
		c.keys = append(c.keys, dkStripWS(k))
	}
	hasFrom := false
	for _, k := range c.keys {
		hasFrom = hasFrom || strings.EqualFold(k, "from")
	}
	if !hasFrom {
		return dkPerm("From field not signed")
	}
	if t, ok := tags["t"]; ok {
		if _, err := strconv.ParseInt(dkStripWS(t), 10, 64); err != nil {
			return dkPerm("malformed time: " + err.Error())
		}
	}
	if x, ok := tags["x"]; ok {
		sec, err := strconv.ParseInt(dkStripWS(x), 10, 64)
		if err != nil {
			return dkPerm("malformed expiration time: " + err.Error())
		}
		if time.Now().After(time.Unix(sec, 0)) {
			return dkPerm("signature has expired")
		}
	}

	if q, ok := tags["q"]; ok {
		method, _, _ := strings.Cut(q, ":")
		if dkStripWS(method) != "dns/txt" {
			return dkPerm("unsupported public key query method")
		}
	}
	key, err := dkQueryKey(lookup, c.res.Selector+"._domainkey."+c.res.Domain, keys)
	if err != nil {
		return err
	}

	keyAlgo, hashAlgo, ok := strings.Cut(c.res.Algorithm, "-")
	if !ok {
		return dkPerm("malformed algorithm name")
	}
	if key.hashes != nil && !slices.Contains(key.hashes, hashAlgo) {
		return dkPerm("inappropriate hash algorithm")
	}
	switch hashAlgo {
	case "sha1":
		// RFC 8301 section 3.1: rsa-sha1 must not be used.
		return dkPerm("hash algorithm too weak: sha1")
	case "sha256":
		c.alg = crypto.SHA256
	default:
		return dkPerm("unsupported hash algorithm")
	}
	if key.algo != keyAlgo {
		return dkPerm("inappropriate key algorithm")
	}
	if key.services != nil && !slices.Contains(key.services, "email") {
		return dkPerm("inappropriate service")
	}
	c.pub = key.pub

	hc, bc := "simple", "simple"
	if cs := dkStripWS(tags["c"]); cs != "" {
		h, b, hasBody := strings.Cut(cs, "/")
		if h != "" {
			hc = h
		}
		if hasBody && b != "" {
			bc = b
		}
	}
	if hc != "simple" && hc != "relaxed" {
		return dkPerm("unsupported header canonicalization algorithm")
	}
	if bc != "simple" && bc != "relaxed" {
		return dkPerm("unsupported body canonicalization algorithm")
	}
	c.relaxedH, c.relaxedB = hc == "relaxed", bc == "relaxed"
	// l= leaves part of the body unsigned: whatever follows it could be
	// anything (go-msgauth refuses it too).
	if _, ok := tags["l"]; ok {
		return dkFail("message contains an insecure body length tag")
	}
	if c.bodyHash, err = dkDecodeBase64(tags["bh"]); err != nil {
		return dkPerm("malformed body hash: " + err.Error())
	}
	if c.sig, err = dkDecodeBase64(tags["b"]); err != nil {
		return dkPerm("malformed signature: " + err.Error())
	}
	return nil
}

// dkDecodeBase64 is base64.StdEncoding.DecodeString(dkStripWS(v)) (same
// result, same error), without the string in between when v is ASCII.
func dkDecodeBase64(v string) ([]byte, error) {
	if !dkIsASCII(v) {
		return base64.StdEncoding.DecodeString(dkStripWS(v))
	}
	var arr [1024]byte
	src := arr[:0]
	for i := 0; i < len(v); i++ {
		if c := v[i]; c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			src = append(src, c)
		}
	}
	dst := make([]byte, base64.StdEncoding.DecodedLen(len(src)))
	n, err := base64.StdEncoding.Decode(dst, src)
	return dst[:n], err
}

// finish compares the body hash and checks the signature over the header
// fields.
func (c *dkSigCheck) finish(fields []policy.Field) error {
	sum, err := c.body.Sum()
	c.body.free()
	c.body = nil
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(sum, c.bodyHash) != 1 {
		return dkFail("body hash did not verify")
	}
	canon := dkAppendCRLFLines
	if c.relaxedH {
		canon = dkAppendRelaxedHeader
	}
	// The header block to hash is built in one reused buffer: the signed
	// fields, then this signature's field without its b= value and
	// without its final line break.
	sc := dkHeaderScratchPool.Get().(*dkHeaderScratch)
	buf := sc.appendHeaders(sc.buf[:0], fields, c.keys, canon)
	self := len(buf)
	if c.relaxedH {
		sc.tmp = dkAppendWithoutSigValue(sc.tmp[:0], c.raw)
		buf = dkAppendRelaxedHeader(buf, sc.tmp)
	} else {
		buf = dkAppendWithoutSigValue(buf, c.raw)
	}
	for len(buf) > self && (buf[len(buf)-1] == '\r' || buf[len(buf)-1] == '\n') {
		buf = buf[:len(buf)-1]
	}
	hsum := sha256.Sum256(buf)
	hashed := hsum[:]
	sc.buf = buf
	sc.release()
	switch pub := c.pub.(type) {
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(pub, c.alg, hashed, c.sig); err != nil {
			return dkFail("signature did not verify: " + err.Error())
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, hashed, c.sig) {
			return dkFail("signature did not verify: dkim: invalid Ed25519 signature")
		}
	}
	return nil
}

// dkAppendWithoutSigValue appends s to dst without the values of its b=
// tags, to hash a signature field without its signature. It does what
// go-msgauth's regexp.MustCompile(`(b\s*=)[^;]+`).ReplaceAllString(s, "$1")
// does (FuzzDKIMWithoutSigValue holds them equal): from left to right, a
// "b" followed by white space (\s: SP, HTAB, LF, FF, CR), "=" and at least
// one byte other than ";" loses the bytes after the "=" up to the next ";"
// or the end; the scan goes on after them.
func dkAppendWithoutSigValue(dst []byte, s string) []byte {
	for {
		i := strings.IndexByte(s, 'b')
		if i < 0 {
			return append(dst, s...)
		}
		j := i + 1
		for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\f' || s[j] == '\r') {
			j++
		}
		if j+1 >= len(s) || s[j] != '=' || s[j+1] == ';' {
			// No match starting at this "b": go on after it.
			dst = append(dst, s[:i+1]...)
			s = s[i+1:]
			continue
		}
		dst = append(dst, s[:j+1]...)
		s = s[j+1:]
		if k := strings.IndexByte(s, ';'); k >= 0 {
			s = s[k:]
		} else {
			s = ""
		}
	}
}

// dkCRLFLines returns a header field with every line ending in CRLF (a
// bare LF becomes CRLF), as verifiers that read the message line by line
// see it: "simple" header canonicalization.
func dkCRLFLines(raw []byte) string {
	if dkIsCRLFLines(raw) {
		return string(raw)
	}
	return string(dkAppendCRLFLinesSlow(nil, raw))
}

// dkAppendCRLFLines appends dkCRLFLines(raw) to dst.
func dkAppendCRLFLines(dst, raw []byte) []byte {
	if dkIsCRLFLines(raw) {
		return append(dst, raw...)
	}
	return dkAppendCRLFLinesSlow(dst, raw)
}

// dkIsCRLFLines reports whether dkCRLFLines leaves raw as it is: it ends
// in CRLF and every LF in it follows a CR (a field as the SMTP server
// stores it).
func dkIsCRLFLines(raw []byte) bool {
	if len(raw) < 2 || raw[len(raw)-2] != '\r' || raw[len(raw)-1] != '\n' {
		return false
	}
	for i := bytes.IndexByte(raw, '\n'); i >= 0; {
		if i == 0 || raw[i-1] != '\r' {
			return false
		}
		j := bytes.IndexByte(raw[i+1:], '\n')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return true
}

// dkAppendCRLFLinesSlow appends raw to dst line by line: each line (up to
// and with LF, or the rest) without its LF and then one CR before it, and
// with CRLF; empty lines (none but the rest after a last LF) are dropped.
func dkAppendCRLFLinesSlow(dst, raw []byte) []byte {
	for len(raw) > 0 {
		var l []byte
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			l, raw = raw[:i], raw[i+1:]
		} else {
			l, raw = raw, nil
		}
		l = bytes.TrimSuffix(l, []byte{'\r'})
		dst = append(dst, l...)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

// dkKey is a public key record (RFC 6376 section 3.6.1).
type dkKey struct {
	pub      crypto.PublicKey
	algo     string   // k=
	hashes   []string // h=, nil: any
	services []string // s=, nil: any
}

// dkKeyCache keeps the keys parsed from key records, by the record's text:
// parsing one (the tags, the base64 of p=, x509.ParsePKIXPublicKey) is
// work done per message for the same few records again and again. The record is still looked up for every signature (a
// revoked or rotated key takes effect as the resolver's cache allows);
// only the parse is saved, and a record that does not give a usable key
// is parsed again each time. The keys kept are never changed.
//
// Go's crypto/rsa keeps nothing with an *rsa.PublicKey (1.25 and 1.26:
// every VerifyPKCS1v15 builds the modulus's Montgomery form again, about
// 8 µs for 2048 bits), so keeping the key saves the parse only.
type dkKeyCache struct {
	mu   sync.Mutex
	keys map[string]*dkKey
}

// maxDKIMKeys bounds a dkKeyCache: past it, the cache starts over.
// maxDKIMKeyRecord is the longest record kept (an RSA-8192 key's is about
// 1.5 KiB), so the cache holds at most 4 MiB of records.
const (
	maxDKIMKeys      = 1024
	maxDKIMKeyRecord = 4 << 10
)

func (kc *dkKeyCache) get(record string) *dkKey {
	if kc == nil {
		return nil
	}
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return kc.keys[record]
}

func (kc *dkKeyCache) put(record string, k *dkKey) {
	if kc == nil || len(record) > maxDKIMKeyRecord {
		return
	}
	kc.mu.Lock()
	defer kc.mu.Unlock()
	if kc.keys == nil || len(kc.keys) >= maxDKIMKeys {
		kc.keys = make(map[string]*dkKey)
	}
	kc.keys[record] = k
}

// dkQueryKey looks up and parses the key record at name; keys (nil: none)
// keeps the RSA keys parsed before.
func dkQueryKey(lookup func(string) ([]string, error), name string, keys *dkKeyCache) (*dkKey, error) {
	txts, err := lookup(name)
	var ne net.Error
	if errors.As(err, &ne) && ne.Temporary() {
		return nil, dkTemp("key unavailable: " + err.Error())
	} else if err != nil {
		return nil, dkPerm("no key for signature: " + err.Error())
	}
	switch len(txts) {
	case 0:
		return nil, dkPerm("no valid key found")
	case 1:
	default:
		// RFC 6376 section 3.6.2.2: undefined; refuse.
		return nil, dkPerm("multiple TXT records found for key")
	}
	if k := keys.get(txts[0]); k != nil {
		return k, nil
	}
	k, err := dkParseKey(txts[0])
	if err != nil {
		return nil, err
	}
	keys.put(txts[0], k)
	return k, nil
}

// dkParseKey parses a key record.
func dkParseKey(record string) (*dkKey, error) {
	tags, err := ParseDKIMTags(record)
	if err != nil {
		return nil, dkPerm("key record error: " + strings.TrimPrefix(err.Error(), "auth: "))
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, dkPerm("incompatible public key version")
	}
	p, ok := tags["p"]
	if !ok {
		return nil, dkPerm("key syntax error: missing public key data")
	}
	if p == "" {
		return nil, dkPerm("key revoked")
	}
	der, err := base64.StdEncoding.DecodeString(dkStripWS(p))
	if err != nil {
		return nil, dkPerm("key syntax error: " + err.Error())
	}
	k := &dkKey{}
	switch tags["k"] {
	case "rsa", "":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 erratum 3017: RSAPublicKey is found as well.
			if pub, err = x509.ParsePKCS1PublicKey(der); err != nil {
				return nil, dkPerm("key syntax error: " + err.Error())
			}
		}
		rsaPub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, dkPerm("key syntax error: not an RSA public key")
		}
		// RFC 8301 section 3.2: keys under 1024 bits are not valid.
		if bits := rsaPub.Size() * 8; bits < 1024 {
			return nil, dkPerm(fmt.Sprintf("key is too short: want 1024 bits, has %v bits", bits))
		}
		k.pub, k.algo = rsaPub, "rsa"
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, dkPerm(fmt.Sprintf("invalid Ed25519 public key size: %v bytes", len(der)))
		}
		k.pub, k.algo = ed25519.PublicKey(der), "ed25519"
	default:
		return nil, dkPerm("unsupported key algorithm")
	}
	if h, ok := tags["h"]; ok {
		for _, a := range strings.Split(h, ":") {
			k.hashes = append(k.hashes, dkStripWS(a))
		}
	}
	if s, ok := tags["s"]; ok {
		var services []string
		wildcard := false
		for _, a := range strings.Split(s, ":") {
			a = dkStripWS(a)
			wildcard = wildcard || a == "*"
			services = append(services, a)
		}
		if !wildcard {
			k.services = services
		}
	}
	return k, nil
}
