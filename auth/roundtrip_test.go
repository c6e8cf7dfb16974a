package auth

import (
	"context"
	"net/netip"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

// TestResultsSurviveTheQueue: the values the SPF and DKIM rules leave in a
// transaction are kept as JSON by the queue (EncodeValues) and restored on
// a rebuilt transaction (SetEncodedValues). DMARC then decides exactly as
// it does on the original transaction, writes the same header, and its own
// result survives a second trip.
func TestResultsSurviveTheQueue(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	const good, bad = "192.0.2.10", "203.0.113.9"
	tests := []struct {
		name     string
		client   string
		from     string // MAIL FROM and From header
		authUser string
		sign     bool
		setup    func(*dnstest.Server)
		spf      SPFStatus // "" when SPF is skipped
		dkim     authres.ResultValue
		dmarc    authres.ResultValue
		code     int // DMARC verdict: 0 Next, else Deny's code
	}{
		{name: "SPF pass aligned", client: good, from: "alice@example.com",
			spf: SPFPass, dkim: authres.ResultNone, dmarc: authres.ResultPass},
		{name: "SPF fail", client: bad, from: "alice@example.com",
			spf: SPFFail, dkim: authres.ResultNone, dmarc: authres.ResultFail, code: 550},
		{name: "DKIM pass aligned", client: bad, from: "alice@example.com", sign: true,
			spf: SPFFail, dkim: authres.ResultPass, dmarc: authres.ResultPass},
		{name: "SPF temperror", client: good, from: "alice@temp.test",
			setup: func(s *dnstest.Server) { s.Fail("temp.test", dns.RcodeServerFailure) },
			spf:   SPFTempError, dkim: authres.ResultNone, dmarc: authres.ResultFail, code: 550},
		{name: "DKIM temperror", client: bad, from: "alice@example.com", sign: true,
			setup: func(s *dnstest.Server) { s.Fail(signer.DNSName(), dns.RcodeServerFailure) },
			spf:   SPFFail, dkim: authres.ResultTempError, dmarc: authres.ResultFail, code: 550},
		{name: "DMARC temperror", client: good, from: "alice@example.com", sign: true,
			setup: func(s *dnstest.Server) { s.Fail("_dmarc.example.com", dns.RcodeRefused) },
			spf:   SPFPass, dkim: authres.ResultPass, dmarc: authres.ResultTempError, code: 451},
		{name: "SPF skipped (authenticated), DKIM pass", client: bad, from: "alice@example.com", authUser: "alice@example.com", sign: true,
			dkim: authres.ResultPass, dmarc: authres.ResultPass},
		{name: "SPF skipped (authenticated), unsigned", client: good, from: "alice@example.com", authUser: "alice@example.com",
			dkim: authres.ResultNone, dmarc: authres.ResultFail, code: 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dkimZone(t, signer)
			srv.Add(
				`example.com. TXT "v=spf1 ip4:`+good+` -all"`,
				`_dmarc.example.com. TXT "v=DMARC1; p=reject"`,
				`_dmarc.temp.test. TXT "v=DMARC1; p=reject"`,
			)
			if tt.setup != nil {
				tt.setup(srv)
			}
			ctx := context.Background()
			conn := &policy.Conn{ID: "c1", Remote: netip.AddrPortFrom(netip.MustParseAddr(tt.client), 40000),
				Helo: "client.example.net", AuthUser: tt.authUser}
			tx := policy.NewTransaction(conn, "tx1")
			tx.From = policy.MustParseAddress(tt.from)

			// MAIL: SPF (its verdict does not matter here).
			CheckSPF(SPFOptions{Resolver: srv.Resolver(), Receiver: testAuthServID, Logger: quietLogger()})(ctx, tx)
			spf, ok := SPFResultKey.Get(tx)
			assert.Equal(t, tt.spf != "", ok)
			assert.Equal(t, tt.spf, spf.Result, "SPF problem: %s", spf.Problem)

			// DATA: DKIM, without a Received field, so that only
			// arAddedKey tells DMARC that the DKIM field is ours.
			m := newTestMessage(t, fromMsg(tt.from))
			if tt.sign {
				sig, err := signer.Sign(ctx, m)
				require.NoError(t, err)
				m.Header.AddRaw(sig)
			}
			require.Equal(t, policy.Next(), VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, Logger: quietLogger()})(ctx, tx, m))
			dk, ok := DKIMResultsKey.Get(tx)
			require.True(t, ok)
			require.Len(t, dk, 1)
			assert.Equal(t, tt.dkim, dk[0].Result, "DKIM reason: %s", dk[0].Reason)
			queued := messageString(t, m)

			// The queue keeps the values as JSON and the message bytes.
			enc, err := tx.EncodeValues()
			require.NoError(t, err)
			rebuilt := policy.NewTransaction(conn, "tx1")
			rebuilt.From = tx.From
			rebuilt.SetEncodedValues(enc)

			dmarcRule := CheckDMARC(DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID, DeferOnTempError: true, Logger: quietLogger()})
			mDirect, mQueued := newTestMessage(t, queued), newTestMessage(t, queued)
			vDirect := dmarcRule(ctx, tx, mDirect)
			vQueued := dmarcRule(ctx, rebuilt, mQueued)

			assert.Equal(t, tt.code, vDirect.Reply.Code, "%v", vDirect)
			assert.Equal(t, vDirect.Kind, vQueued.Kind)
			assert.Equal(t, vDirect.Reply, vQueued.Reply)
			direct, ok := DMARCResultKey.Get(tx)
			require.True(t, ok)
			queuedRes, ok := DMARCResultKey.Get(rebuilt)
			require.True(t, ok)
			assert.Equal(t, tt.dmarc, direct.Result, "%+v", direct)
			assert.Equal(t, direct, queuedRes)
			if tt.dmarc == authres.ResultTempError {
				assert.Contains(t, direct.Reason, "DNS lookup of _dmarc.example.com failed")
			}
			assert.Equal(t, messageString(t, mDirect), messageString(t, mQueued), "the same header, DKIM's field kept as ours")

			// A second trip, DMARC's own result included.
			enc, err = rebuilt.EncodeValues()
			require.NoError(t, err)
			again := policy.NewTransaction(conn, "tx1")
			again.SetEncodedValues(enc)
			for _, check := range []func() (any, any, bool){
				func() (any, any, bool) {
					v, ok := SPFResultKey.Get(again)
					w, _ := SPFResultKey.Get(tx)
					return w, v, ok || tt.spf == ""
				},
				func() (any, any, bool) { v, ok := DKIMResultsKey.Get(again); return dk, v, ok },
				func() (any, any, bool) { v, ok := DMARCResultKey.Get(again); return direct, v, ok },
				func() (any, any, bool) { v, ok := arAddedKey.Get(again); w, _ := arAddedKey.Get(tx); return w, v, ok },
			} {
				want, got, ok := check()
				assert.True(t, ok)
				assert.Equal(t, want, got)
			}
		})
	}
}

// TestAuthValuesAreJSON: every type stored under a key of this package
// encodes and decodes to itself through its key, as the queue does it.
func TestAuthValuesAreJSON(t *testing.T) {
	pct := 50
	rec := &dmarc.Record{Policy: dmarc.PolicyReject, SubdomainPolicy: dmarc.PolicyQuarantine, Percent: &pct,
		DKIMAlignment: dmarc.AlignmentStrict, SPFAlignment: dmarc.AlignmentRelaxed, ReportURIAggregate: []string{"mailto:d@x.test"}}
	tx := policy.NewTransaction(nil, "tx1")
	spf := SPFResult{Result: SPFTempError, Identity: "helo", Domain: "x.test", Sender: "postmaster@x.test",
		ClientIP: netip.MustParseAddr("2001:db8::1"), Helo: "x.test", Receiver: "mx.test", Problem: "DNS lookup of x.test failed"}
	dk := []DKIMResult{{Result: authres.ResultPermError, Domain: "x.test", Selector: "s", Identifier: "@x.test",
		Algorithm: "rsa-sha256", Signature: "abc", Reason: "no key for signature"}}
	dm := DMARCResult{Result: authres.ResultFail, FromDomain: "x.test", PolicyDomain: "x.test", Record: rec,
		Policy: dmarc.PolicyReject, Disposition: dmarc.PolicyQuarantine, SPF: spf, DKIMDomain: "x.test", Reason: "r"}
	added := [][]byte{[]byte("Authentication-Results: mx.test; none\r\n")}
	SPFResultKey.Set(tx, spf)
	DKIMResultsKey.Set(tx, dk)
	DMARCResultKey.Set(tx, dm)
	arAddedKey.Set(tx, added)
	enc, err := tx.EncodeValues()
	require.NoError(t, err)
	back := policy.NewTransaction(nil, "tx1")
	back.SetEncodedValues(enc)
	gotSPF, ok := SPFResultKey.Get(back)
	assert.True(t, ok)
	assert.Equal(t, spf, gotSPF)
	gotDK, ok := DKIMResultsKey.Get(back)
	assert.True(t, ok)
	assert.Equal(t, dk, gotDK)
	gotDM, ok := DMARCResultKey.Get(back)
	assert.True(t, ok)
	assert.Equal(t, dm, gotDM)
	gotAdded, ok := arAddedKey.Get(back)
	assert.True(t, ok)
	assert.Equal(t, added, gotAdded)
}
