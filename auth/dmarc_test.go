package auth

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"
	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func dmarcZone(t *testing.T) *dnstest.Server {
	return dnstest.New(t,
		`_dmarc.example.com. TXT "v=DMARC1; p=reject; rua=mailto:d@example.com"`,
		`_dmarc.quarantine.test. TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.monitor.test. TXT "v=DMARC1; p=none"`,
		`_dmarc.strict.test. TXT "v=DMARC1; p=reject; adkim=s; aspf=s"`,
		`_dmarc.example.org. TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`_dmarc.pct.test. TXT "v=DMARC1; p=reject; pct=50"`,
		`_dmarc.two.test. TXT "v=DMARC1; p=reject"`,
		`_dmarc.two.test. TXT "v=DMARC1; p=none"`,
		`_dmarc.bad.test. TXT "v=DMARC1; p=bogus"`,
		`_dmarc.other.test. TXT "some other record"`,
		`_dmarc.broken.test. TXT "v=DMARC1; p=reject"`,
	)
}

func fromMsg(from string) string {
	return strings.Replace(sampleMessage, "From: Alice <alice@example.com>", "From: "+from, 1)
}

func TestCheckDMARC(t *testing.T) {
	pass := func(d string) []DKIMResult { return []DKIMResult{{Result: authres.ResultPass, Domain: d}} }
	failDKIM := []DKIMResult{{Result: authres.ResultFail, Domain: "example.com"}}
	spf := func(res SPFStatus, domain string) *SPFResult {
		return &SPFResult{Result: res, Domain: domain, Identity: "mailfrom"}
	}
	tests := []struct {
		name     string
		from     string // From header value
		sender   string // MAIL FROM
		dkim     []DKIMResult
		spf      *SPFResult
		opts     func(*DMARCOptions)
		setup    func(*dnstest.Server)
		want     authres.ResultValue
		verdict  policy.Verdict
		policy   dmarc.Policy
		disp     dmarc.Policy
		arSubstr string
	}{
		{name: "aligned DKIM pass", from: "a@example.com", dkim: pass("example.com"),
			want: authres.ResultPass, verdict: policy.Next(), policy: dmarc.PolicyReject, disp: dmarc.PolicyNone,
			arSubstr: "dmarc=pass (p=reject dis=none) header.from=example.com"},
		{name: "relaxed DKIM alignment (subdomain d=)", from: "a@example.com", dkim: pass("mail.example.com"),
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "relaxed DKIM alignment (parent d=)", from: "a@news.example.com", dkim: pass("example.com"),
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "aligned SPF pass", from: "a@example.com", spf: spf("pass", "bounces.example.com"),
			want: authres.ResultPass, verdict: policy.Next(), arSubstr: "spf=pass smtp.mailfrom=bounces.example.com"},
		{name: "unaligned DKIM and SPF pass: reject", from: "a@example.com", dkim: pass("example.net"), spf: spf("pass", "example.net"),
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of example.com"),
			policy: dmarc.PolicyReject, disp: dmarc.PolicyReject, arSubstr: "dmarc=fail (p=reject dis=reject) header.from=example.com"},
		{name: "look-alike domain is not aligned", from: "a@example.com", dkim: pass("notexample.com"),
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of example.com")},
		{name: "aligned DKIM fail, SPF fail", from: "a@example.com", dkim: failDKIM, spf: spf("fail", "example.com"),
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of example.com")},
		{name: "quarantine", from: "a@quarantine.test",
			want: authres.ResultFail, verdict: policy.QuarantineBecause("dmarc", "DMARC fail for quarantine.test (policy quarantine)"), disp: dmarc.PolicyQuarantine},
		{name: "quarantine, own queue name", from: "a@quarantine.test", opts: func(o *DMARCOptions) { o.QuarantineQueue = "spoof" },
			want: authres.ResultFail, verdict: policy.QuarantineBecause("spoof", "DMARC fail for quarantine.test (policy quarantine)")},
		{name: "p=none fails but goes on", from: "a@monitor.test",
			want: authres.ResultFail, verdict: policy.Next(), policy: dmarc.PolicyNone, disp: dmarc.PolicyNone},
		{name: "no record", from: "a@norecord.test", dkim: pass("norecord.test"),
			want: authres.ResultNone, verdict: policy.Next(), arSubstr: "dmarc=none header.from=norecord.test"},
		{name: "non-DMARC TXT only", from: "a@other.test", want: authres.ResultNone, verdict: policy.Next()},
		{name: "two records: none", from: "a@two.test", want: authres.ResultNone, verdict: policy.Next()},
		{name: "invalid record: permerror", from: "a@bad.test", want: authres.ResultPermError, verdict: policy.Next()},
		{name: "strict DKIM: subdomain d= not aligned", from: "a@strict.test", dkim: pass("mail.strict.test"),
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of strict.test")},
		{name: "strict SPF: subdomain not aligned", from: "a@strict.test", spf: spf("pass", "bounce.strict.test"),
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of strict.test")},
		{name: "strict: exact domain aligned", from: "a@strict.test", dkim: pass("strict.test"),
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "org-domain fallback uses sp=", from: "a@deep.sub.example.org", dkim: pass("example.net"),
			want: authres.ResultFail, verdict: policy.QuarantineBecause("dmarc", "DMARC fail for deep.sub.example.org (policy quarantine)"), policy: dmarc.PolicyQuarantine},
		{name: "org-domain fallback, relaxed pass", from: "a@sub.example.org", dkim: pass("example.org"),
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "pct sampled in: reject", from: "a@pct.test", opts: func(o *DMARCOptions) { o.Rand = func(int) int { return 49 } },
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of pct.test"), disp: dmarc.PolicyReject},
		{name: "pct sampled out: reject becomes quarantine", from: "a@pct.test", opts: func(o *DMARCOptions) { o.Rand = func(int) int { return 50 } },
			want: authres.ResultFail, verdict: policy.QuarantineBecause("dmarc", "DMARC fail for pct.test (policy quarantine)"), policy: dmarc.PolicyReject, disp: dmarc.PolicyQuarantine},
		{name: "SERVFAIL: temperror recorded, goes on", from: "a@broken.test", setup: func(s *dnstest.Server) { s.Fail("_dmarc.broken.test", dns.RcodeServerFailure) },
			want: authres.ResultTempError, verdict: policy.Next(), arSubstr: `dmarc=temperror reason="DNS lookup of _dmarc.broken.test failed: server misbehaving" header.from=broken.test`},
		{name: "SERVFAIL with DeferOnTempError", from: "a@broken.test", setup: func(s *dnstest.Server) { s.Fail("_dmarc.broken.test", dns.RcodeServerFailure) },
			opts: func(o *DMARCOptions) { o.DeferOnTempError = true },
			want: authres.ResultTempError, verdict: policy.Deny(451, "4.7.0", "DMARC policy lookup failed, try again later")},
		{name: "SERVFAIL at org domain: temperror", from: "a@x.example.org", setup: func(s *dnstest.Server) { s.Fail("_dmarc.example.org", dns.RcodeServerFailure) },
			want: authres.ResultTempError, verdict: policy.Next()},
		{name: "monitor mode", from: "a@example.com", opts: func(o *DMARCOptions) { o.Monitor = true },
			want: authres.ResultFail, verdict: policy.Next(), disp: dmarc.PolicyReject},
		{name: "Decide overrides", from: "a@example.com", opts: func(o *DMARCOptions) {
			o.Decide = func(_ context.Context, _ *policy.Transaction, r DMARCResult) policy.Verdict {
				return policy.Quarantine("review-" + string(r.Result))
			}
		}, want: authres.ResultFail, verdict: policy.Quarantine("review-fail")},
		{name: "two From addresses: denied", from: "a@example.com, b@example.org",
			want: authres.ResultPermError, verdict: policy.Deny(550, "5.7.1", "DMARC: the From header must hold exactly one address")},
		{name: "two From addresses allowed", from: "a@example.com, b@example.org", opts: func(o *DMARCOptions) { o.AllowMalformedFrom = true },
			want: authres.ResultPermError, verdict: policy.Next()},
		{name: "unparsable From", from: "<<<", want: authres.ResultPermError,
			verdict: policy.Deny(550, "5.7.1", "DMARC: the From header must hold exactly one address")},
		{name: "helo SPF counts for the null sender", from: "postmaster@example.com", sender: "<>",
			spf:  &SPFResult{Result: SPFPass, Domain: "mx.example.com", Identity: "helo"},
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "helo SPF does not count with a sender", from: "a@example.com", sender: "x@example.net",
			spf:  &SPFResult{Result: SPFPass, Domain: "mx.example.com", Identity: "helo"},
			want: authres.ResultFail, verdict: policy.Deny(550, "5.7.1", "Message rejected by the DMARC policy of example.com")},
		{name: "display name with encoded word", from: "=?x-unknown?q?Al=E9?= <a@example.com>", dkim: pass("example.com"),
			want: authres.ResultPass, verdict: policy.Next()},
		{name: "IDN From domain", from: "a@bücher.example", want: authres.ResultNone, verdict: policy.Next(),
			arSubstr: "header.from=xn--bcher-kva.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dmarcZone(t)
			if tt.setup != nil {
				tt.setup(srv)
			}
			opts := DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, Rand: func(int) int { return 0 }}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			sender := tt.sender
			if sender == "" {
				sender = "someone@example.net"
			}
			tx := newTestTx(sender)
			DKIMResultsKey.Set(tx, tt.dkim)
			if tt.spf != nil {
				SPFResultKey.Set(tx, *tt.spf)
			}
			m := newTestMessage(t, fromMsg(tt.from))
			v := CheckDMARC(opts)(context.Background(), tx, m)
			assert.Equal(t, tt.verdict, policy.Verdict{Kind: v.Kind, Reply: v.Reply, Queue: v.Queue})
			res, ok := DMARCResultKey.Get(tx)
			require.True(t, ok)
			assert.Equal(t, tt.want, res.Result, "%+v", res)
			if tt.policy != "" {
				assert.Equal(t, tt.policy, res.Policy)
			}
			if tt.disp != "" {
				assert.Equal(t, tt.disp, res.Disposition)
			}
			ar := m.Header.Get(AuthResultsField)
			assert.True(t, strings.HasPrefix(ar, testAuthServID+"; "), ar)
			assert.Contains(t, ar, "dmarc="+string(tt.want))
			if tt.arSubstr != "" {
				assert.Contains(t, ar, tt.arSubstr)
			}
		})
	}
}

// TestCheckDMARCIgnoresHeaderResults: results come from the transaction's
// values only (which survive queueing), never from header fields, not even
// fields of ours above our Received field; fields claiming our authserv-id
// below it (forged by the client) are removed.
func TestCheckDMARCIgnoresHeaderResults(t *testing.T) {
	ours := "Received: from c (c [192.0.2.9]) by " + testAuthServID + " with ESMTP id tx1\r\n"
	tests := []struct {
		name string
		top  string // fields above our Received
		low  string // fields the client sent
	}{
		{"DKIM result above our Received", "Authentication-Results: " + testAuthServID + "; dkim=pass header.d=example.com header.s=s1\r\n", ""},
		{"forged DKIM result", "", "Authentication-Results: " + testAuthServID + "; dkim=pass header.d=example.com\r\n"},
		{"Received-SPF above our Received", "Received-SPF: pass (" + testAuthServID + ": good) client-ip=192.0.2.9; envelope-from=\"b@example.com\"; helo=c; identity=mailfrom; receiver=" + testAuthServID + ";\r\n", ""},
		{"forged Received-SPF", "", "Received-SPF: pass client-ip=192.0.2.9; envelope-from=\"b@example.com\"; identity=mailfrom;\r\n"},
		{"spf result in an A-R above our Received", "Authentication-Results: " + testAuthServID + "; spf=pass smtp.mailfrom=b@example.com\r\n", ""},
		{"someone else's results", "", "Authentication-Results: other.example; dkim=pass header.d=example.com\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dmarcZone(t)
			m := newTestMessage(t, tt.top+ours+tt.low+sampleMessage)
			tx := newTestTx("b@example.com")
			v := CheckDMARC(DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, Monitor: true})(context.Background(), tx, m)
			assert.Equal(t, policy.Next(), v)
			res, _ := DMARCResultKey.Get(tx)
			assert.Equal(t, authres.ResultValue(authres.ResultFail), res.Result, "%+v", res)
			assert.Equal(t, SPFResult{}, res.SPF, "no SPF result in the transaction: SPF not checked")
			assert.NotContains(t, m.Header.Get(AuthResultsField), "spf=", "no spf= clause for an unchecked SPF")
			// No field claiming our id survives below our Received.
			below := false
			for _, f := range m.Header.Fields() {
				if f.Name() == "Received" {
					below = true
					continue
				}
				if below && f.Name() == AuthResultsField {
					assert.NotEqual(t, testAuthServID, AuthServIDOf(f.Value()), "forged field kept")
				}
			}
		})
	}
}

// TestVerifyThenDMARC runs the two rules in order over loopback DNS, as a
// chain would.
func TestVerifyThenDMARC(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	srv := dkimZone(t, signer)
	srv.Add(`_dmarc.example.com. TXT "v=DMARC1; p=reject"`)
	ctx := context.Background()

	m := newTestMessage(t, sampleMessage)
	sig, err := signer.Sign(ctx, m)
	require.NoError(t, err)
	m.Header.AddRaw(sig)
	signed := messageString(t, m)

	chain := policy.NewChain()
	chain.PreQ("dkim", VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID}))
	chain.PreQ("dmarc", CheckDMARC(DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID}))

	tx := newTestTx("bounce@elsewhere.example")
	r := chain.EvalPreQ(ctx, tx, newTestMessage(t, signed))
	assert.True(t, r.Accepted(), "%v", r.Reply)

	tx = newTestTx("bounce@elsewhere.example")
	r = chain.EvalPreQ(ctx, tx, newTestMessage(t, strings.Replace(signed, "Hello Bob", "Hello Rob", 1)))
	assert.False(t, r.Accepted())
	assert.Equal(t, 550, r.Reply.Code)
	assert.Equal(t, "dmarc", r.Rule)
}

func TestOrganizationalDomain(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":          "example.com",
		"a.b.example.com":      "example.com",
		"mail.example.co.uk":   "example.co.uk",
		"co.uk":                "co.uk",
		"com":                  "com",
		"Example.COM.":         "example.com",
		"x.y.example.internal": "example.internal",
	} {
		assert.Equal(t, want, OrganizationalDomain(in), in)
	}
}

func FuzzParseFrom(f *testing.F) {
	for _, s := range []string{"a@example.com", `"A, B" <a@example.com>`, "a@x, b@y", "=?utf-8?q?x?= <a@b.c>", "<<<", "group: a@b.c;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ds, err := dmParseFrom(s)
		if err != nil {
			return
		}
		for _, d := range ds {
			if n, err := policy.NormalizeDomain(d); err != nil || n != d {
				t.Fatalf("domain %q not normalized", d)
			}
		}
	})
}

// The HELO name is the client's to choose (go-smtp passes any bytes but
// space); a malformed one must not reach the spf clause DMARC records,
// where a reader (go-msgauth's parser, a MUA) takes ";dkim=pass ..." in it
// for a result of ours. A DMARC check run again on the message must not
// find a forged pass there.
func TestCheckDMARCMalformedHelo(t *testing.T) {
	srv := dmarcZone(t)
	opts := DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, Monitor: true}
	tx := newTestTx("<>")
	helo := "x;dkim=pass\theader.d=example.com\tx"
	SPFResultKey.Set(tx, SPFResult{Result: SPFNone, Identity: "helo", Helo: helo, Domain: strings.ToLower(helo)})
	m := newTestMessage(t, "Received: from x by "+testAuthServID+" with ESMTP id tx1\r\n"+fromMsg("a@example.com"))
	CheckDMARC(opts)(context.Background(), tx, m)
	res, _ := DMARCResultKey.Get(tx)
	require.Equal(t, authres.ResultValue(authres.ResultFail), res.Result)
	ar := m.Header.Get(AuthResultsField)
	assert.NotContains(t, ar, "dkim=pass")

	// Again, with only the header to go by (no values): nothing in it is
	// taken for a result.
	tx2 := newTestTx("<>")
	CheckDMARC(opts)(context.Background(), tx2, m)
	res2, _ := DMARCResultKey.Get(tx2)
	assert.Equal(t, authres.ResultValue(authres.ResultFail), res2.Result, "%+v", res2)
	assert.False(t, res2.DKIMAligned)
}

// The record cache saves the parse of a DMARC record seen before, and only
// that: the record is looked up every time, a changed record is used at
// once, a record that does not parse is not kept, and what a rule does to
// the record of a result never reaches the next message.
func TestDMARCRecordCache(t *testing.T) {
	txt := "v=DMARC1; p=reject; pct=50; rua=mailto:a@example.com; rf=afrf"
	want, err := dmarc.Parse(txt)
	require.NoError(t, err)
	current, lookups := txt, 0
	lookup := func(name string) ([]string, error) {
		lookups++
		assert.Equal(t, "_dmarc.example.com", name)
		return []string{"other record", current}, nil
	}
	rc := &dmRecordCache{}
	for i := range 3 {
		rec, err := dmLookup(lookup, "example.com", rc)
		require.NoError(t, err)
		assert.Equal(t, want, rec, "lookup %d", i)
		*rec.Percent, rec.ReportURIAggregate[0], rec.Policy = 1, "changed", dmarc.PolicyNone
	}
	assert.Equal(t, 3, lookups, "the record is looked up every time")
	assert.Len(t, rc.recs, 1)

	current = "v=DMARC1; p=none" // the record changes
	rec, err := dmLookup(lookup, "example.com", rc)
	require.NoError(t, err)
	assert.Equal(t, dmarc.PolicyNone, rec.Policy)
	assert.Nil(t, rec.Percent)
	assert.Nil(t, rec.ReportURIAggregate)
	assert.Len(t, rc.recs, 2)

	current = "v=DMARC1; p=bogus"
	for range 2 {
		_, err := dmLookup(lookup, "example.com", rc)
		assert.Error(t, err)
	}
	assert.Len(t, rc.recs, 2, "an invalid record is not kept")

	for i := range maxDMARCRecords + 1 { // bounded: it starts over when full
		rc.put(fmt.Sprint(i), want)
	}
	assert.LessOrEqual(t, len(rc.recs), maxDMARCRecords)
	huge := "v=DMARC1; p=none; rua=mailto:" + strings.Repeat("x", maxDMARCRecord)
	rc.put(huge, want)
	assert.Nil(t, rc.get(huge), "a huge record is not kept")
}
