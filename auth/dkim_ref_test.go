package auth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// The signer as it was before it worked through reused buffers (maps,
// strings.ToLower and string concatenation per message), kept verbatim as
// the reference the differential tests hold the fast code to, byte for
// byte. refRelaxedHeader is go-msgauth's relaxed CanonicalizeHeader.

func refHeaderKeys(s *DKIMSigner, h *policy.Header) []string {
	names := s.Headers
	if names == nil {
		names = defaultDKIMHeaders
	}
	count := map[string]int{}
	for _, f := range h.Fields() {
		count[strings.ToLower(f.Name())]++
	}
	keys := []string{}
	seen := map[string]bool{}
	for _, n := range names {
		ln := strings.ToLower(n)
		if seen[ln] || ln == "from" {
			continue
		}
		seen[ln] = true
		for i := 0; i < count[ln]; i++ {
			keys = append(keys, n)
		}
	}
	from := make([]string, count["from"]+1)
	for i := range from {
		from[i] = "From"
	}
	return append(from, keys...)
}

func refSign(s *DKIMSigner, ctx context.Context, m *policy.Message, now time.Time) ([]byte, error) {
	keyAlgo := "rsa"
	hashOpt := crypto.Hash(crypto.SHA256)
	switch s.Key.Public().(type) {
	case *rsa.PublicKey:
	case ed25519.PublicKey:
		keyAlgo, hashOpt = "ed25519", crypto.Hash(0)
	}
	bh, err := dkHashBodyInto(ctx, m.Body(), nil)
	if err != nil {
		return nil, err
	}
	keys := refHeaderKeys(s, m.Header)
	tags := map[string]string{
		"v":  "1",
		"a":  keyAlgo + "-sha256",
		"bh": base64.StdEncoding.EncodeToString(bh),
		"c":  "relaxed/relaxed",
		"d":  s.Domain,
		"s":  s.Selector,
		"t":  strconv.FormatInt(now.Unix(), 10),
		"h":  strings.Join(keys, ":"),
	}
	if s.Expiration > 0 {
		tags["x"] = strconv.FormatInt(now.Add(s.Expiration).Unix(), 10)
	}
	hh := sha256.New()
	refHashHeaders(hh, m.Header.Fields(), keys, refRelaxedField)
	unsigned := refRelaxedHeader(refFormatSignature(tags, ""))
	io.WriteString(hh, strings.TrimSuffix(unsigned, "\r\n"))
	sig, err := s.Key.Sign(rand.Reader, hh.Sum(nil), hashOpt)
	if err != nil {
		return nil, err
	}
	return []byte(refFormatSignature(tags, base64.StdEncoding.EncodeToString(sig))), nil
}

func refRelaxedField(raw []byte) string { return refRelaxedHeader(string(raw)) }

func refRelaxedHeader(raw string) string {
	k, v, ok := strings.Cut(raw, ":")
	if !ok {
		return strings.TrimSpace(strings.ToLower(raw)) + ":\r\n"
	}
	k = strings.TrimSpace(strings.ToLower(k))
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}), " ")
	return k + ":" + v + "\r\n"
}

func refHashHeaders(h io.Writer, hdr []policy.Field, keys []string, canon func(raw []byte) string) {
	taken := map[string]int{}
	for _, k := range keys {
		lk := strings.ToLower(k)
		skip := taken[lk]
		for i := len(hdr) - 1; i >= 0; i-- {
			if !strings.EqualFold(strings.TrimSpace(hdr[i].Name()), lk) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			taken[lk]++
			io.WriteString(h, canon(hdr[i].Raw))
			break
		}
	}
}

func refFormatSignature(tags map[string]string, b string) string {
	names := make([]string, 0, len(tags))
	for k := range tags {
		names = append(names, k)
	}
	sort.Strings(names)
	var f strings.Builder
	f.WriteString(dkSigField + ":")
	line := ""
	for _, k := range names {
		v := tags[k]
		if 3+len(line)+len(v)+len(k) > 75 {
			f.WriteString(line + "\r\n")
			line = ""
		}
		line += " " + k + "=" + v + ";"
	}
	f.WriteString(line + "\r\n")
	rest := " b=" + b
	for first := true; first || rest != ""; first = false {
		if !first {
			f.WriteString("\r\n ")
		}
		n := min(75, len(rest))
		f.WriteString(rest[:n])
		rest = rest[n:]
	}
	f.WriteString("\r\n")
	return f.String()
}
