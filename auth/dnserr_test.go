package auth

import (
	"context"
	"net/netip"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

// TestDNSErrorsAgreeAcrossRules: one DNS answer gives the same kind of
// result in SPF, DKIM and DMARC. REFUSED and SERVFAIL are temporary in all
// three (Go reports REFUSED as a "server misbehaving" error that is not
// temporary, which DKIM and DMARC once took for a permanent failure);
// NXDOMAIN is permanent (SPF none, DKIM permerror: no key, DMARC none: no
// policy).
func TestDNSErrorsAgreeAcrossRules(t *testing.T) {
	signer := newTestSigner(t, "example.com", testEd25519())
	tests := []struct {
		name  string
		rcode int // 0: the names do not exist
		spf   SPFStatus
		dkim  authres.ResultValue
		dmarc authres.ResultValue
	}{
		{"REFUSED", dns.RcodeRefused, SPFTempError, authres.ResultTempError, authres.ResultTempError},
		{"SERVFAIL", dns.RcodeServerFailure, SPFTempError, authres.ResultTempError, authres.ResultTempError},
		{"NXDOMAIN", 0, SPFNone, authres.ResultPermError, authres.ResultNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dnstest.New(t)
			if tt.rcode != 0 {
				for _, name := range []string{"example.com", signer.DNSName(), "_dmarc.example.com"} {
					srv.Fail(name, tt.rcode)
				}
			}
			ctx := context.Background()
			conn := &policy.Conn{ID: "c1", Remote: netip.MustParseAddrPort("192.0.2.10:40000"), Helo: "mx.example.com"}
			tx := policy.NewTransaction(conn, "tx1")
			tx.From = policy.MustParseAddress("alice@example.com")

			spfRule := CheckSPF(SPFOptions{Identity: SPFMailFrom, Mode: SPFSoft, Resolver: srv.Resolver(), Receiver: testAuthServID, Logger: quietLogger()})
			require.Equal(t, policy.Next(), spfRule(ctx, tx))
			spf, ok := SPFResultKey.Get(tx)
			require.True(t, ok)
			assert.Equal(t, tt.spf, spf.Result, "SPF: %s", spf.Problem)

			m := newTestMessage(t, sampleMessage)
			sig, err := signer.Sign(ctx, m)
			require.NoError(t, err)
			m.Header.AddRaw(sig)
			require.Equal(t, policy.Next(), VerifyDKIM(DKIMVerifyOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, tx, m))
			dk, ok := DKIMResultsKey.Get(tx)
			require.True(t, ok)
			require.Len(t, dk, 1)
			assert.Equal(t, tt.dkim, dk[0].Result, "DKIM: %v", dk[0])

			require.Equal(t, policy.Next(), CheckDMARC(DMARCOptions{Resolver: srv.Resolver(), AuthServID: testAuthServID})(ctx, tx, m))
			dm, ok := DMARCResultKey.Get(tx)
			require.True(t, ok)
			assert.Equal(t, tt.dmarc, dm.Result, "DMARC: %+v", dm)
		})
	}
}
