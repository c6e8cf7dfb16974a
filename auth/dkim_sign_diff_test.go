package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// signHeaders are header blocks that exercise the h= list and the header
// hashing: repeated, oversigned and differently cased names, folding, odd
// white space, a field without a colon, names that are not ASCII (ſ folds
// to s under EqualFold but not under ToLower; the Kelvin sign lowercases
// to k), invalid UTF-8.
var signHeaders = []string{
	"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n",
	benchHeader[:len(benchHeader)-2],
	"FROM:a@example.com\r\nfrom : b@example.com\r\nsubject:  one \r\nSUBJECT:\ttwo\r\n Subject : three\r\n",
	"From: a@example.com\r\nTo: x,\r\n\ty,\r\n  z\r\nReferences: <1@x>\r\n <2@x>\r\nReferences: <3@x>\r\n",
	"From: a@example.com\r\nX-No-Colon\r\nSubject:\r\nTo:   \r\n\r\n",
	"From: a@example.com\r\nſubject: long s\r\nSubject: plain\r\nKey: kelvin\r\nkey: k\r\n",
	"From: a@example.com\r\n\xffSubject: bad\r\nSubj\xe9ct: latin1\r\nSubject: \xff\xfe value\r\n",
	"From: a@example.com\nSubject: bare lf\n folded\nTo: b@example.org\n",
	"From: " + strings.Repeat("x", 300) + "@example.com\r\nSubject: " + strings.Repeat("long ", 100) + "\r\n",
}

// signHeaderLists are values of DKIMSigner.Headers.
var signHeaderLists = [][]string{
	nil,
	{"Subject", "subject", "SUBJECT", "To", "from", "FROM", "References"},
	{"ſubject", "Subject", "Key", "key", "Subj\xe9ct", "\xffSubject", "X-No-Colon", ""},
	{"To"},
}

// TestDKIMSignMatchesReference holds the signer to the one it replaced
// (refSign, which built maps and strings per message): the same field, byte
// for byte, for both key types (RSA PKCS #1 v1.5 and Ed25519 signatures are
// deterministic), with and without x=.
func TestDKIMSignMatchesReference(t *testing.T) {
	now := time.Unix(1750000000, 0)
	for _, key := range []struct {
		name string
		key  crypto.Signer
	}{{"ed25519", testEd25519()}, {"rsa", testRSA(t)}} {
		for hi, hdr := range signHeaders {
			for li, list := range signHeaderLists {
				for _, exp := range []time.Duration{0, 72 * time.Hour} {
					name := fmt.Sprintf("%s/header%d/list%d/x=%v", key.name, hi, li, exp)
					signer := newTestSigner(t, "example.com", key.key)
					signer.Headers, signer.Expiration = list, exp
					raw := hdr + "\r\nbody  text \r\n\r\n"
					m := newTestMessage(t, raw)
					want, err := refSign(signer, context.Background(), m, now)
					require.NoError(t, err, name)
					got, err := signer.sign(context.Background(), m, now)
					require.NoError(t, err, name)
					assert.Equal(t, string(want), string(got), name)
				}
			}
		}
	}
}

// TestDKIMSignMatchesGoMsgauth compares a whole signature with the one
// go-msgauth makes with the same h= list (its clock cannot be set: the two
// are made until both fall in the same second).
func TestDKIMSignMatchesGoMsgauth(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	for i, hdr := range signHeaders[:4] {
		raw := hdr + "\r\n" + benchTextBody(2000)
		m := newTestMessage(t, raw)
		for try := 0; ; try++ {
			ours, err := signer.Sign(context.Background(), m)
			require.NoError(t, err)
			tags, err := ParseDKIMTags(strings.TrimPrefix(string(ours), dkSigField+":"))
			require.NoError(t, err)
			s, err := dkim.NewSigner(&dkim.SignOptions{
				Domain: "example.com", Selector: signer.Selector, Signer: signer.Key,
				HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
				HeaderKeys: strings.Split(dkStripWS(tags["h"]), ":"),
			})
			require.NoError(t, err)
			_, err = io.WriteString(s, raw)
			require.NoError(t, err)
			require.NoError(t, s.Close())
			theirs := s.Signature()
			if !strings.Contains(theirs, " t="+tags["t"]+";") && try < 3 {
				continue // a second boundary fell between the two
			}
			assert.Equal(t, theirs, string(ours), "header %d", i)
			break
		}
	}
}

// TestDKIMSignAllocations: signing a small message allocates a handful of
// objects (the body reader and hash, the key's signature, the field
// returned), not maps and strings per header field.
func TestDKIMSignAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	signer := newTestSigner(t, "example.com", testEd25519())
	raw := benchHeader + benchTextBody(4<<10)
	m := newTestMessage(t, raw)
	ctx := context.Background()
	_, err := signer.Sign(ctx, m) // fill the pools
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := signer.Sign(ctx, m); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.0f allocations per signature", allocs)
	assert.LessOrEqual(t, allocs, 16.0)
}

// FuzzDKIMSign compares the signer with refSign on arbitrary headers and
// lists of names to sign.
func FuzzDKIMSign(f *testing.F) {
	for i, h := range signHeaders {
		f.Add(h, strings.Join(signHeaderLists[i%len(signHeaderLists)], ","))
	}
	signer := newTestSigner(f, "example.com", testEd25519())
	now := time.Unix(1750000000, 0)
	f.Fuzz(func(t *testing.T, hdr, names string) {
		m, err := policy.NewMessage(strings.NewReader(hdr+"\r\n\r\nbody\r\n"), int64(len(hdr)+10), nil)
		if err != nil {
			return
		}
		s := *signer
		if names != "" {
			s.Headers = strings.Split(names, ",")
		}
		want, err := refSign(&s, context.Background(), m, now)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.sign(context.Background(), m, now)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want, got) {
			t.Fatalf("header %q names %q:\nref  %q\nours %q", hdr, names, want, got)
		}
	})
}

// FuzzDKIMHashHeaders compares the header canonicalizations and
// dkHashHeaders, which the verifier shares, with the reference on arbitrary
// fields and h= keys.
func FuzzDKIMHashHeaders(f *testing.F) {
	for _, h := range signHeaders {
		f.Add(h, "From:from:Subject:subject:SUBJECT:To:ſubject:key:x-no-colon:")
	}
	f.Fuzz(func(t *testing.T, hdr, keyList string) {
		var fields []policy.Field
		for _, line := range strings.SplitAfter(hdr, "\n") {
			if line != "" {
				fields = append(fields, policy.Field{Raw: []byte(line)})
			}
		}
		for _, fl := range fields {
			if got, want := dkRelaxedField(fl.Raw), refRelaxedField(fl.Raw); got != want {
				t.Fatalf("relaxed %q: ref %q, ours %q", fl.Raw, want, got)
			}
		}
		keys := strings.Split(keyList, ":")
		for _, c := range []struct {
			ref  func([]byte) string
			ours func(dst, raw []byte) []byte
		}{
			{refRelaxedField, dkAppendRelaxedHeader},
			{dkCRLFLines, func(dst, raw []byte) []byte { return append(dst, dkCRLFLines(raw)...) }},
		} {
			want, got := sha256.New(), sha256.New()
			refHashHeaders(want, fields, keys, c.ref)
			dkHashHeaders(got, fields, keys, c.ours)
			if !bytes.Equal(want.Sum(nil), got.Sum(nil)) {
				t.Fatalf("header %q keys %q: hashes differ", hdr, keys)
			}
		}
	})
}
