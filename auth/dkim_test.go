package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/miekg/dns"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testAuthServID = "mx.example.net"

var (
	testRSAOnce sync.Once
	testRSAKey  *rsa.PrivateKey
)

// testRSA returns one RSA 2048 key shared by the tests of the package.
func testRSA(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	testRSAOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testRSAKey = k
	})
	return testRSAKey
}

func testEd25519() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
}

func newTestMessage(tb testing.TB, raw string) *policy.Message {
	tb.Helper()
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	require.NoError(tb, err)
	return m
}

func messageString(tb testing.TB, m *policy.Message) string {
	tb.Helper()
	var b bytes.Buffer
	_, err := m.WriteTo(&b)
	require.NoError(tb, err)
	return b.String()
}

func newTestTx(from string) *policy.Transaction {
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "tx1")
	tx.From = policy.MustParseAddress(from)
	return tx
}

const sampleMessage = "From: Alice <alice@example.com>\r\n" +
	"To: Bob <bob@example.org>\r\n" +
	"Subject: Hello there\r\n" +
	"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n" +
	"Message-ID: <1234@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	"\r\n" +
	"this is a   test with  spaces.   \r\n" +
	"\r\n\r\n"

func newTestSigner(tb testing.TB, domain string, key crypto.Signer) *DKIMSigner {
	tb.Helper()
	s, err := NewDKIMSigner(domain, "sel1", key)
	require.NoError(tb, err)
	return s
}

// dkimZone serves the signer's key record.
func dkimZone(tb testing.TB, signers ...*DKIMSigner) *dnstest.Server {
	var recs []string
	for _, s := range signers {
		recs = append(recs, fmt.Sprintf("%s. TXT %q", s.DNSName(), s.DNSRecord()))
	}
	return dnstest.New(tb, recs...)
}

func writePEM(tb testing.TB, typ string, der []byte) string {
	p := filepath.Join(tb.TempDir(), "key.pem")
	require.NoError(tb, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	return p
}

func TestLoadDKIMKey(t *testing.T) {
	rsaKey := testRSA(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pkcs8 := func(k any) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name    string
		path    string
		wantErr string
		wantAlg string
	}{
		{"rsa pkcs1", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)), "", "rsa"},
		{"rsa pkcs8", writePEM(t, "PRIVATE KEY", pkcs8(rsaKey)), "", "rsa"},
		{"ed25519 pkcs8", writePEM(t, "PRIVATE KEY", pkcs8(testEd25519())), "", "ed25519"},
		{"rsa 1024 refused", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "too small", ""},
		{"rsa 1024 pkcs8 refused", writePEM(t, "PRIVATE KEY", pkcs8(small)), "too small", ""},
		{"ecdsa refused", writePEM(t, "PRIVATE KEY", pkcs8(ec)), "unsupported key type", ""},
		{"certificate refused", writePEM(t, "CERTIFICATE", []byte{1, 2, 3}), "unsupported PEM block", ""},
		{"garbage", writePEM(t, "PRIVATE KEY", []byte("garbage")), "asn1", ""},
		{"missing file", filepath.Join(t.TempDir(), "nope.pem"), "no such file", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := LoadDKIMKey(tt.path)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			s, err := NewDKIMSigner("Example.COM.", "s1", k)
			require.NoError(t, err)
			assert.Equal(t, "example.com", s.Domain)
			assert.Contains(t, s.DNSRecord(), "k="+tt.wantAlg+"; p=")
		})
	}
}

func TestNewDKIMSignerRejects(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	for _, tt := range []struct {
		name, domain, selector string
		key                    crypto.Signer
	}{
		{"small key", "example.com", "s", small},
		{"no key", "example.com", "s", nil},
		{"bad domain", "exa mple.com", "s", testEd25519()},
		{"literal", "[192.0.2.1]", "s", testEd25519()},
		{"bad selector", "example.com", "s;x=1", testEd25519()},
		{"empty selector", "example.com", "", testEd25519()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewDKIMSigner(tt.domain, tt.selector, tt.key)
			assert.Error(t, err)
		})
	}
}

func TestSignDKIMRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		alg  string
	}{
		{"rsa", testRSA(t), "rsa-sha256"},
		{"ed25519", testEd25519(), "ed25519-sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer := newTestSigner(t, "example.com", tc.key)
			srv := dkimZone(t, signer)
			ctx := context.Background()

			m := newTestMessage(t, sampleMessage)
			tx := newTestTx("alice@example.com")
			v := SignDKIM(signer)(ctx, tx, m)
			require.Equal(t, policy.Next(), v)
			fields := m.Header.Fields()
			require.Equal(t, "DKIM-Signature", fields[0].Name(), "signature at the top")
			tags, err := ParseDKIMTags(fields[0].Value())
			require.NoError(t, err)
			assert.Equal(t, "relaxed/relaxed", tags["c"])
			assert.Equal(t, tc.alg, tags["a"])
			assert.Equal(t, "example.com", tags["d"])
			assert.Equal(t, "sel1", tags["s"])
			h := strings.Split(dkStripWS(tags["h"]), ":")
			assert.Equal(t, []string{"From", "From"}, h[:2], "From oversigned")
			assert.Contains(t, h, "Subject")
			assert.Contains(t, h, "Message-ID")
			assert.NotContains(t, h, "Cc", "absent fields are not listed")

			// Verify what would be sent, as a receiver would.
			rx := newTestMessage(t, messageString(t, m))
			rtx := newTestTx("alice@example.com")
			v = VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, rtx, rx)
			assert.Equal(t, policy.Next(), v)
			res, ok := DKIMResultsKey.Get(rtx)
			require.True(t, ok)
			require.Len(t, res, 1)
			assert.Equal(t, authres.ResultValue(authres.ResultPass), res[0].Result, "%v", res[0].Reason)
			assert.Equal(t, "example.com", res[0].Domain)
			assert.Equal(t, "sel1", res[0].Selector)
			assert.Equal(t, tc.alg, res[0].Algorithm)
			ar := rx.Header.Get(AuthResultsField)
			assert.True(t, strings.HasPrefix(ar, testAuthServID+"; dkim=pass"), ar)
			assert.Contains(t, ar, "header.d=example.com")
			assert.Contains(t, ar, "header.s=sel1")

			// A one-byte change of the body breaks it.
			tampered := strings.Replace(messageString(t, m), "Hello Bob", "Hello Bib", 1)
			rx = newTestMessage(t, tampered)
			rtx = newTestTx("alice@example.com")
			VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, rtx, rx)
			res, _ = DKIMResultsKey.Get(rtx)
			require.Len(t, res, 1)
			assert.Equal(t, authres.ResultValue(authres.ResultFail), res[0].Result)
			assert.Contains(t, rx.Header.Get(AuthResultsField), "dkim=fail")

			// So does a second From field added in transit (oversigning).
			rx = newTestMessage(t, "From: mallory@evil.example\r\n"+messageString(t, m))
			rtx = newTestTx("alice@example.com")
			VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, rtx, rx)
			res, _ = DKIMResultsKey.Get(rtx)
			assert.Equal(t, authres.ResultValue(authres.ResultFail), res[0].Result)
		})
	}
}

func TestSignDKIMWhichMessages(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	withFrom := func(from string) string {
		return strings.Replace(sampleMessage, "From: Alice <alice@example.com>", "From: "+from, 1)
	}
	tests := []struct {
		name     string
		sender   string
		msg      string
		locals   []string
		wantSign bool
	}{
		{"local sender, own From", "alice@example.com", sampleMessage, nil, true},
		{"subdomain From", "alice@example.com", withFrom("a@lists.example.com"), nil, true},
		{"foreign From header", "alice@example.com", withFrom("a@example.org"), nil, false},
		{"look-alike From header", "alice@example.com", withFrom("a@badexample.com"), nil, false},
		{"foreign sender", "bob@example.org", sampleMessage, nil, false},
		{"sender in another local domain", "alice@example.info", sampleMessage, []string{"example.com", "example.info"}, true},
		{"sender not in the local list", "alice@example.com", sampleMessage, []string{"example.info"}, false},
		{"null sender (our bounce)", "<>", withFrom("MAILER-DAEMON@example.com"), nil, true},
		{"two From fields", "alice@example.com", "From: a@example.com\r\n" + sampleMessage, nil, false},
		{"two From addresses", "alice@example.com", withFrom("a@example.com, b@example.com"), nil, false},
		{"no From", "alice@example.com", "Subject: x\r\n\r\nbody\r\n", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMessage(t, tt.msg)
			tx := newTestTx(tt.sender)
			v := SignDKIM(signer, tt.locals...)(context.Background(), tx, m)
			assert.Equal(t, policy.Next(), v)
			assert.Equal(t, tt.wantSign, m.Header.Has("DKIM-Signature"))
		})
	}

	t.Run("not signed twice", func(t *testing.T) {
		m := newTestMessage(t, sampleMessage)
		rule := SignDKIM(signer)
		tx := newTestTx("alice@example.com")
		rule(context.Background(), tx, m)
		rule(context.Background(), tx, m)
		assert.Len(t, m.Header.Values("DKIM-Signature"), 1)
	})
	t.Run("context ended gives Fail", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		m := newTestMessage(t, sampleMessage)
		v := SignDKIM(signer)(ctx, newTestTx("alice@example.com"), m)
		assert.Equal(t, policy.KindDeny, v.Kind)
		assert.Equal(t, 451, v.Reply.Code)
		assert.False(t, m.Header.Has("DKIM-Signature"))
	})
}

func TestSignOrVerifyDKIM(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	other := newTestSigner(t, "example.org", testRSA(t))
	srv := dkimZone(t, signer, other)
	rule := SignOrVerifyDKIM(signer, DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID}, "example.com")
	ctx := context.Background()

	// Outgoing: signed, not verified.
	m := newTestMessage(t, sampleMessage)
	tx := newTestTx("alice@example.com")
	assert.Equal(t, policy.Next(), rule(ctx, tx, m))
	assert.True(t, m.Header.Has("DKIM-Signature"))
	assert.False(t, m.Header.Has(AuthResultsField))

	// Incoming, signed by example.org: verified.
	in := strings.Replace(sampleMessage, "alice@example.com", "carol@example.org", 1)
	m = newTestMessage(t, in)
	sig, err := other.Sign(ctx, m)
	require.NoError(t, err)
	m.Header.AddRaw(sig)
	tx = newTestTx("carol@example.org")
	assert.Equal(t, policy.Next(), rule(ctx, tx, m))
	res, ok := DKIMResultsKey.Get(tx)
	require.True(t, ok)
	require.Len(t, res, 1)
	assert.Equal(t, authres.ResultValue(authres.ResultPass), res[0].Result)
	assert.Equal(t, "example.org", res[0].Domain)
	assert.Len(t, m.Header.Values("DKIM-Signature"), 1, "not signed by us")
}

func TestVerifyDKIMResults(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	ctx := context.Background()
	signed := func(t *testing.T) string {
		m := newTestMessage(t, sampleMessage)
		sig, err := signer.Sign(ctx, m)
		require.NoError(t, err)
		m.Header.AddRaw(sig)
		return messageString(t, m)
	}
	tests := []struct {
		name    string
		setup   func(srv *dnstest.Server)
		msg     func(t *testing.T) string
		timeout time.Duration
		want    []authres.ResultValue
	}{
		{"pass", nil, signed, 0, []authres.ResultValue{authres.ResultPass}},
		{"no signature", nil, func(*testing.T) string { return sampleMessage }, 0, []authres.ResultValue{authres.ResultNone}},
		{"no key (NXDOMAIN)", func(s *dnstest.Server) { s.Remove(signer.DNSName(), dns.TypeTXT) }, signed, 0, []authres.ResultValue{authres.ResultPermError}},
		{"revoked key", func(s *dnstest.Server) {
			s.Remove(signer.DNSName(), dns.TypeTXT)
			s.Add(signer.DNSName() + `. TXT "v=DKIM1; k=ed25519; p="`)
		}, signed, 0, []authres.ResultValue{authres.ResultPermError}},
		{"SERVFAIL", func(s *dnstest.Server) { s.Fail(signer.DNSName(), dns.RcodeServerFailure) }, signed, 0, []authres.ResultValue{authres.ResultTempError}},
		{"timeout", func(s *dnstest.Server) { s.Timeout(signer.DNSName()) }, signed, 300 * time.Millisecond, []authres.ResultValue{authres.ResultTempError}},
		{"malformed signature", nil, func(*testing.T) string {
			return "DKIM-Signature: v=1; a=rsa-sha256; garbage\r\n" + sampleMessage
		}, 0, []authres.ResultValue{authres.ResultPermError}},
		{"l= tag refused", nil, func(t *testing.T) string {
			s := signed(t)
			return strings.Replace(s, "v=1;", "v=1; l=3;", 1)
		}, 0, []authres.ResultValue{authres.ResultFail}},
		{"two signatures, one bad", nil, func(t *testing.T) string {
			s := signed(t)
			bad := strings.Replace(s[:strings.Index(s, "\r\nFrom:")+2], "d=example.com", "d=example.com; i=@other.example", 1)
			return bad + s
		}, 0, []authres.ResultValue{authres.ResultPermError, authres.ResultPass}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dkimZone(t, signer)
			if tt.setup != nil {
				tt.setup(srv)
			}
			m := newTestMessage(t, tt.msg(t))
			tx := newTestTx("alice@example.com")
			v := VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, LookupTimeout: tt.timeout})(ctx, tx, m)
			assert.Equal(t, policy.Next(), v, "never denies by default")
			res, ok := DKIMResultsKey.Get(tx)
			require.True(t, ok)
			var got []authres.ResultValue
			for _, r := range res {
				got = append(got, r.Result)
			}
			assert.Equal(t, tt.want, got, "%+v", res)
			ar := m.Header.Get(AuthResultsField)
			for _, w := range tt.want {
				assert.Contains(t, ar, "dkim="+string(w))
			}
			id, parsed, err := ParseAuthResults(ar)
			require.NoError(t, err, ar)
			assert.Equal(t, testAuthServID, id)
			assert.Len(t, parsed, len(tt.want))
		})
	}
}

func TestVerifyDKIMCapAndDeny(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	srv := dkimZone(t, signer)
	ctx := context.Background()
	m := newTestMessage(t, sampleMessage)
	for i := 0; i < 7; i++ {
		sig, err := signer.Sign(ctx, m)
		require.NoError(t, err)
		// Break each signature's body hash so none passes.
		m.Header.AddRaw(bytes.Replace(sig, []byte("bh="), []byte("bh=AAAA"), 1))
	}
	raw := messageString(t, m)

	tx := newTestTx("a@example.org")
	v := VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, tx, newTestMessage(t, raw))
	assert.Equal(t, policy.Next(), v)
	res, _ := DKIMResultsKey.Get(tx)
	assert.Len(t, res, 5, "default cap")

	tx = newTestTx("a@example.org")
	v = VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, MaxVerifications: 2, DenyOnFail: true})(ctx, tx, newTestMessage(t, raw))
	res, _ = DKIMResultsKey.Get(tx)
	assert.Len(t, res, 2)
	assert.Equal(t, policy.KindDeny, v.Kind)
	assert.Equal(t, policy.Reply{Code: 550, Enhanced: "5.7.20", Text: "No passing DKIM signature found"}, v.Reply)

	// DenyOnFail lets a message with no signature, or a passing one, through.
	for _, raw := range []string{sampleMessage} {
		v = VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, DenyOnFail: true})(ctx, newTestTx("a@example.org"), newTestMessage(t, raw))
		assert.Equal(t, policy.Next(), v)
	}
}

func TestVerifyDKIMStripsForgedResults(t *testing.T) {
	srv := dnstest.New(t)
	ctx := context.Background()
	raw := "Authentication-Results: " + testAuthServID + "; spf=pass smtp.mailfrom=example.com\r\n" + // added at our hop
		"Received: from client (client [192.0.2.9]) by " + testAuthServID + " with ESMTP id tx1\r\n" +
		"Authentication-Results: " + strings.ToUpper(testAuthServID) + "; dkim=pass header.d=paypal.com\r\n" + // forged
		"Authentication-Results: (comment) \"" + testAuthServID + "\"; dmarc=pass\r\n" + // forged, quoted
		"Authentication-Results: other.example; dkim=pass header.d=paypal.com\r\n" + // someone else's: kept
		"Received: from elsewhere by other.example\r\n" +
		sampleMessage
	m := newTestMessage(t, raw)
	tx := newTestTx("a@example.org")
	tx.Header.Add("Received-SPF", "pass (mx.example.net: domain of a@example.org designates 192.0.2.9 as permitted sender)")
	VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, tx, m)
	ars := m.Header.Values(AuthResultsField)
	require.Len(t, ars, 3, "%q", ars)
	assert.Equal(t, testAuthServID+"; dkim=none", ars[0])
	assert.Equal(t, testAuthServID+"; spf=pass smtp.mailfrom=example.com", ars[1])
	assert.Equal(t, "other.example; dkim=pass header.d=paypal.com", ars[2])

	// The plain helper removes every field with our id.
	assert.Equal(t, 2, StripAuthResults(m.Header, testAuthServID))
	assert.Len(t, m.Header.Values(AuthResultsField), 1)
}

// peakHeapDuring runs fn and returns how far the live heap grew above
// its level before fn, sampled every few milliseconds.
func peakHeapDuring(fn func()) uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	runtime.GC()
	base := read()
	var peak atomic.Uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			if h := read(); h > base && h-base > peak.Load() {
				peak.Store(h - base)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	fn()
	close(done)
	<-stopped
	return peak.Load()
}

// TestSignDKIMLargeMessageStreams signs a 50 MiB message (12 under -race) stored in a file
// and checks the live heap stays far below the message size (go-msgauth
// allocates garbage per write, but keeps nothing).
func TestSignDKIMLargeMessageStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 50 MiB")
	}
	signer := newTestSigner(t, "example.com", testRSA(t))
	path := filepath.Join(t.TempDir(), "big.eml")
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = io.WriteString(f, sampleMessage)
	require.NoError(t, err)
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	chunk := strings.Repeat(line, 16<<10/len(line)+1)
	for n := 0; n < largeMessageMiB<<20; n += len(chunk) {
		_, err = io.WriteString(f, chunk)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	st, err := f.Stat()
	require.NoError(t, err)
	m, err := policy.NewMessage(f, st.Size(), f)
	require.NoError(t, err)
	defer m.Close()

	var v policy.Verdict
	peak := peakHeapDuring(func() {
		v = SignDKIM(signer)(context.Background(), newTestTx("alice@example.com"), m)
	})
	require.Equal(t, policy.Next(), v)
	t.Logf("signing %d MiB: peak heap growth %d KiB", st.Size()>>20, peak>>10)
	assert.Less(t, peak, uint64(16<<20), "signing must stream, not buffer the message")

	// The round-trip tests cover the signature's validity.
	assert.True(t, m.Header.Has("DKIM-Signature"))
}

// TestDKLookupTXTClassifies: the DKIM and DMARC lookups classify errors
// with dnserr, as the SPF rule's Resolver does.
func TestDKLookupTXTClassifies(t *testing.T) {
	tests := []struct {
		name          string
		err           error
		temp, timeout bool
	}{
		{"deadline", context.DeadlineExceeded, true, true},
		{"wrapped deadline", fmt.Errorf("lookup: %w", context.DeadlineExceeded), true, true},
		{"foreign error", io.ErrUnexpectedEOF, true, false},
		{"not found", &net.DNSError{IsNotFound: true}, false, false},
		{"wrapped servfail", fmt.Errorf("x: %w", &net.DNSError{IsTemporary: true}), true, false},
		{"refused, as Go reports it", &net.DNSError{Err: "server misbehaving"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dkLookupTXT(context.Background(), &errResolver{err: tt.err}, 0)("x.example")
			de, ok := err.(*net.DNSError)
			require.True(t, ok, "must be a *net.DNSError, got %T", err)
			assert.Equal(t, tt.temp, de.Temporary())
			assert.Equal(t, tt.timeout, de.IsTimeout)
		})
	}
}

func TestParseDKIMTags(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"v=1; a=rsa-sha256; d=example.com", map[string]string{"v": "1", "a": "rsa-sha256", "d": "example.com"}, false},
		{" v = 1 ;\r\n\tb= abc\r\n def ;", map[string]string{"v": "1", "b": "abc\r\n def"}, false},
		{"", map[string]string{}, false},
		{"v=1; v=2", nil, true},
		{"v=1; novalue", nil, true},
		{"1a=x", nil, true},
		{"=x", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDKIMTags(tt.in)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func FuzzParseDKIMTags(f *testing.F) {
	for _, s := range []string{
		"v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel; h=From:To; bh=abc=; b=def",
		"v=DKIM1; k=ed25519; p=",
		" a = b ; ; c=d\r\n\t;",
		"v=1; v=1",
		"x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := ParseDKIMTags(s)
		if err != nil {
			return
		}
		for k, v := range tags {
			if !dkValidTagName(k) {
				t.Fatalf("invalid tag name %q accepted", k)
			}
			if strings.Contains(v, ";") {
				t.Fatalf("value %q contains a separator", v)
			}
			if v != strings.Trim(v, " \t\r\n") {
				t.Fatalf("value %q not trimmed", v)
			}
		}
	})
}

func BenchmarkSignDKIM(b *testing.B) {
	signer := newTestSigner(b, "example.com", testRSA(b))
	body := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 4096/64)
	raw := strings.Replace(sampleMessage, "Hello Bob,\r\n", body, 1)
	ctx := context.Background()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := signer.Sign(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}

// failingReaderAt serves the first n bytes of s and fails beyond.
type failingReaderAt struct {
	s string
	n int64
}

func (f failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.n {
		return 0, io.ErrUnexpectedEOF
	}
	k := copy(p, f.s[off:min(int64(len(f.s)), f.n)])
	if k < len(p) {
		return k, io.ErrUnexpectedEOF
	}
	return k, nil
}

// TestDKIMSpoolReadFailure: a message that cannot be read is our failure
// (451, retried), never a verification result.
func TestDKIMSpoolReadFailure(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	srv := dkimZone(t, signer)
	m := newTestMessage(t, sampleMessage)
	sig, err := signer.Sign(context.Background(), m)
	require.NoError(t, err)
	raw := string(sig) + sampleMessage
	hdrLen := int64(strings.Index(raw, "\r\n\r\n") + 4)
	for _, sigs := range []int{1, 2} {
		full := strings.Repeat(string(sig), sigs-1) + raw
		src := failingReaderAt{s: full, n: hdrLen + int64(len(sig))*int64(sigs-1) + 3}
		bad, err := policy.NewMessage(src, int64(len(full)), nil)
		require.NoError(t, err)
		tx := newTestTx("a@example.org")
		v := VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(context.Background(), tx, bad)
		assert.Equal(t, 451, v.Reply.Code, "%d signatures", sigs)
		_, ok := DKIMResultsKey.Get(tx)
		assert.False(t, ok)

	}
	n := int64(strings.Index(sampleMessage, "\r\n\r\n") + 7)
	bad, err := policy.NewMessage(failingReaderAt{s: sampleMessage, n: n}, int64(len(sampleMessage)), nil)
	require.NoError(t, err)
	v := SignDKIM(signer)(context.Background(), newTestTx("alice@example.com"), bad)
	assert.Equal(t, 451, v.Reply.Code)
	assert.False(t, bad.Header.Has("DKIM-Signature"))
}

// A null sender is "our own bounce" only when the queue made it (no client
// address); the same null sender from a client on the internet is anyone's,
// and signing its From: <us> message would hand out our signature.
func TestSignDKIMNullSenderFromOutside(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	srv := dkimZone(t, signer)
	bounce := strings.Replace(sampleMessage, "From: Alice <alice@example.com>", "From: MAILER-DAEMON@example.com", 1)
	remoteTx := func(user string) *policy.Transaction {
		tx := policy.NewTransaction(&policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("203.0.113.9:40000"), AuthUser: user}, "tx1")
		return tx
	}
	tests := []struct {
		name     string
		tx       *policy.Transaction
		wantSign bool
	}{
		{"queue-made bounce (no client)", newTestTx("<>"), true},
		{"null sender from an outside client", remoteTx(""), false},
		{"null sender from an authenticated client", remoteTx("alice@example.com"), true},
	}
	for _, tt := range tests {
		t.Run("SignDKIM/"+tt.name, func(t *testing.T) {
			m := newTestMessage(t, bounce)
			assert.Equal(t, policy.Next(), SignDKIM(signer)(context.Background(), tt.tx, m))
			assert.Equal(t, tt.wantSign, m.Header.Has("DKIM-Signature"))
		})
		t.Run("SignOrVerifyDKIM/"+tt.name, func(t *testing.T) {
			m := newTestMessage(t, bounce)
			rule := SignOrVerifyDKIM(signer, DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})
			assert.Equal(t, policy.Next(), rule(context.Background(), tt.tx, m))
			assert.Equal(t, tt.wantSign, m.Header.Has("DKIM-Signature"))
			// What is not signed is verified instead.
			assert.Equal(t, !tt.wantSign, m.Header.Has(AuthResultsField))
		})
	}
}

// TestDefaultDKIMHeadersIsACopy: changing the returned list changes
// nothing else, and a signer with nil Headers signs the default list.
func TestDefaultDKIMHeadersIsACopy(t *testing.T) {
	h := DefaultDKIMHeaders()
	require.Contains(t, h, "Subject")
	h[slices.Index(h, "Subject")] = "X-Not-Signed"
	assert.Contains(t, DefaultDKIMHeaders(), "Subject")
	assert.NotContains(t, DefaultDKIMHeaders(), "X-Not-Signed")

	signer := newTestSigner(t, "example.com", testEd25519())
	m := newTestMessage(t, sampleMessage)
	sig, err := signer.Sign(context.Background(), m)
	require.NoError(t, err)
	tags, err := ParseDKIMTags(strings.SplitN(string(sig), ":", 2)[1])
	require.NoError(t, err)
	assert.Contains(t, strings.Split(dkStripWS(tags["h"]), ":"), "Subject")
}
