package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// msgauthResult maps a go-msgauth verification to its RFC 8601 result.
func msgauthResult(v *dkim.Verification) authres.ResultValue {
	switch {
	case v.Err == nil:
		return authres.ResultPass
	case dkim.IsTempFail(v.Err):
		return authres.ResultTempError
	case dkim.IsPermFail(v.Err):
		return authres.ResultPermError
	}
	return authres.ResultFail
}

// TestVerifyDKIMMatchesGoMsgauth signs messages with go-msgauth in both
// canonicalizations, alters them in the ways transit does (and forgers
// do), and checks our verifier gives go-msgauth's verdict and reason for
// every signature.
func TestVerifyDKIMMatchesGoMsgauth(t *testing.T) {
	rsaSigner := newTestSigner(t, "example.com", testRSA(t))
	edSigner, err := NewDKIMSigner("example.com", "ed", testEd25519())
	require.NoError(t, err)
	srv := dkimZone(t, rsaSigner, edSigner)
	lookup := func(name string) ([]string, error) {
		return srv.Resolver().LookupTXT(context.Background(), name+".") // as dkLookupTXT asks
	}

	messages := map[string]string{
		"sample": sampleMessage,
		"folded and spaced": "From:   Alice  <alice@example.com>\r\nTo: bob@example.org,\r\n\tcarol@example.org\r\n" +
			"Subject:  Folded\r\n  subject line \r\n\r\n  body  with \t space \r\n\r\n\r\n",
		"bare LF":         "From: alice@example.com\nSubject: bare\n lf fold\n\nline one \nline two\n\n",
		"empty body":      "From: alice@example.com\r\nSubject: empty\r\n\r\n",
		"two subjects":    "From: alice@example.com\r\nSubject: one\r\nSubject: two\r\n\r\nbody\r\n",
		"long blank tail": "From: alice@example.com\r\nSubject: tail\r\n\r\nbody\r\n" + strings.Repeat("\r\n", 3000),
	}
	mutations := map[string]func(string) string{
		"as signed":             func(s string) string { return s },
		"body changed":          func(s string) string { return strings.Replace(s, "body", "bodY", 1) },
		"space added":           func(s string) string { return strings.Replace(s, "\r\n\r\n", "\r\n\r\n ", 1) },
		"blank lines added":     func(s string) string { return s + "\r\n\r\n" },
		"header refolded":       func(s string) string { return strings.Replace(s, "Subject: ", "Subject:\r\n  ", 1) },
		"subject changed":       func(s string) string { return strings.Replace(s, "Subject: ", "Subject: Re: ", 1) },
		"second From":           func(s string) string { return beforeFrom(s, "From: mallory@example.net\r\n") },
		"unsigned field added":  func(s string) string { return beforeFrom(s, "X-Extra: 1\r\n") },
		"key algorithm swapped": func(s string) string { return strings.Replace(s, "a=ed25519-sha256", "a=rsa-sha256", 1) },
		"unknown selector":      func(s string) string { return strings.Replace(s, "s=sel1;", "s=nosuch;", 1) },
		"sha1":                  func(s string) string { return strings.Replace(s, "-sha256", "-sha1", 1) },
		"bad canonicalization":  func(s string) string { return strings.Replace(s, "c=relaxed/relaxed", "c=relaxed/odd", 1) },
		"no From signed": func(s string) string {
			return strings.Replace(strings.Replace(s, "h=From:", "h=", 1), "h=from:", "h=", 1)
		},
	}
	for _, keys := range []struct {
		name   string
		signer *DKIMSigner
	}{{"rsa", rsaSigner}, {"ed25519", edSigner}} {
		for _, c := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
			for mname, raw := range messages {
				var signed bytes.Buffer
				require.NoError(t, dkim.Sign(&signed, strings.NewReader(raw), &dkim.SignOptions{
					Domain: "example.com", Selector: keys.signer.Selector, Signer: keys.signer.Key, Hash: crypto.SHA256,
					HeaderCanonicalization: c, BodyCanonicalization: c,
					HeaderKeys: []string{"From", "Subject", "Subject", "To"},
				}))
				for mutName, mutate := range mutations {
					name := keys.name + "/" + string(c) + "/" + mname + "/" + mutName
					msg := mutate(signed.String())
					want, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
					require.NoError(t, err, name)
					require.Len(t, want, 1, name)

					m, err := policy.NewMessage(strings.NewReader(msg), int64(len(msg)), nil)
					require.NoError(t, err, name)
					got, err := verifyDKIM(context.Background(), DKIMVerifyOptions{Resolver: srv.Resolver(), MaxVerifications: 5}, m, nil)
					require.NoError(t, err, name)
					require.Len(t, got, 1, name)
					assert.Equal(t, msgauthResult(want[0]), got[0].Result, "%s: go-msgauth says %v, we %v", name, want[0].Err, got[0].Reason)
					if want[0].Err != nil {
						assert.Equal(t, strings.TrimPrefix(want[0].Err.Error(), "dkim: "), got[0].Reason, name)
					} else {
						assert.Empty(t, got[0].Reason, name)
					}
					if mutName == "as signed" || mutName == "unsigned field added" {
						assert.Equal(t, authres.ResultValue(authres.ResultPass), got[0].Result, "%s: %v", name, got[0].Reason)
					}
					assert.Equal(t, strings.ToLower(want[0].Domain), got[0].Domain, name)
					assert.Equal(t, want[0].Identifier, got[0].Identifier, name)
				}
			}
		}
	}
}

// beforeFrom inserts field above the From field of message s.
func beforeFrom(s, field string) string {
	i := strings.Index(s, "\nFrom:") + 1
	return s[:i] + field + s[i:]
}

// FuzzVerifyDKIM feeds arbitrary messages (a signed one as the seed) to
// the verifier: it must not panic, and gives one result per signature up
// to the cap.
func FuzzVerifyDKIM(f *testing.F) {
	signer, err := NewDKIMSigner("example.com", "ed", testEd25519())
	require.NoError(f, err)
	srv := dkimZone(f, signer)
	m := newTestMessage(f, sampleMessage)
	sig, err := signer.Sign(context.Background(), m)
	require.NoError(f, err)
	f.Add(string(sig) + sampleMessage)
	f.Add("DKIM-Signature: v=1; a=rsa-sha256; d=x; s=y; h=from; bh=; b=\r\nFrom: a@x\r\n\r\n")
	f.Add("DKIM-Signature: v=1; a=ed25519-sha256; c=simple/relaxed; d=example.com; s=ed; h=from:from; bh=AAAA; b=AAAA; l=1\r\n\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			return
		}
		res, err := verifyDKIM(context.Background(), DKIMVerifyOptions{Resolver: srv.Resolver(), MaxVerifications: 3, LookupTimeout: 1e9}, m, nil)
		if err != nil {
			t.Fatalf("reading from memory failed: %v", err)
		}
		n := len(m.Header.Values(dkSigField))
		if want := max(1, min(n, 3)); len(res) != want {
			t.Fatalf("%d results for %d signatures", len(res), n)
		}
	})
}

// The key cache saves the parse of a key record seen before, and only that:
// the record is looked up every time, and a new key in it is used at once.
func TestDKIMKeyCache(t *testing.T) {
	key1 := testRSA(t)
	key2, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	record := func(k *rsa.PrivateKey) string {
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		require.NoError(t, err)
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
	current := record(key1)
	lookups := 0
	lookup := func(name string) ([]string, error) {
		lookups++
		assert.Equal(t, "sel._domainkey.example.com", name)
		return []string{current}, nil
	}
	kc := &dkKeyCache{}
	for i := range 2 {
		k, err := dkQueryKey(lookup, "sel._domainkey.example.com", kc)
		require.NoError(t, err)
		assert.True(t, key1.PublicKey.Equal(k.pub), "lookup %d", i)
	}
	assert.Equal(t, 2, lookups, "the record is looked up every time")
	assert.Len(t, kc.keys, 1)

	current = record(key2) // the key is rotated
	k, err := dkQueryKey(lookup, "sel._domainkey.example.com", kc)
	require.NoError(t, err)
	assert.True(t, key2.PublicKey.Equal(k.pub), "the new key, not the cached one")
	assert.Len(t, kc.keys, 2)

	for i := range maxDKIMKeys + 1 { // bounded: it starts over when full
		kc.put(fmt.Sprint(i), k)
	}
	assert.LessOrEqual(t, len(kc.keys), maxDKIMKeys)
	kc.put(strings.Repeat("x", maxDKIMKeyRecord+1), k) // a huge record is not kept
	assert.Nil(t, kc.get(strings.Repeat("x", maxDKIMKeyRecord+1)))

	// A record that gives no usable key is not kept: parsed (and refused)
	// each time.
	kc = &dkKeyCache{}
	current = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString([]byte("not a key"))
	for range 2 {
		_, err := dkQueryKey(lookup, "sel._domainkey.example.com", kc)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "key syntax error")
	}
	assert.Empty(t, kc.keys)

	// An Ed25519 key is kept too, and comes back with its tags.
	kc = &dkKeyCache{}
	current = "v=DKIM1; k=ed25519; h=sha256; s=email; p=" + base64.StdEncoding.EncodeToString(testEd25519().Public().(ed25519.PublicKey))
	for range 2 {
		k, err := dkQueryKey(lookup, "sel._domainkey.example.com", kc)
		require.NoError(t, err)
		assert.Equal(t, "ed25519", k.algo)
		assert.Equal(t, []string{"sha256"}, k.hashes)
		assert.Equal(t, []string{"email"}, k.services)
	}
	assert.Len(t, kc.keys, 1)
}

// One VerifyDKIM rule verifies message after message with the key it
// parsed for the first.
func TestVerifyDKIMReusesKey(t *testing.T) {
	signer, err := NewDKIMSigner("example.com", "rsa", testRSA(t))
	require.NoError(t, err)
	srv := dkimZone(t, signer)
	rule := VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver()})
	for i := range 3 {
		m := newTestMessage(t, sampleMessage)
		sig, err := signer.Sign(context.Background(), m)
		require.NoError(t, err)
		m = newTestMessage(t, string(sig)+sampleMessage)
		tx := newTestTx("a@example.com")
		rule(context.Background(), tx, m)
		res, ok := DKIMResultsKey.Get(tx)
		require.True(t, ok)
		require.Len(t, res, 1)
		assert.Equal(t, authres.ResultValue(authres.ResultPass), res[0].Result, "message %d: %s", i, res[0].Reason)
	}
}
