package policy_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

type scoreResult struct {
	Score   float64  `json:"score"`
	Symbols []string `json:"symbols"`
}

const (
	spfKey   policy.Key[string]      = "test.spf"
	scoreKey policy.Key[scoreResult] = "test.score"
	// Same name as spfKey, another type: it cannot read spfKey's value.
	clashKey policy.Key[int] = "test.spf"
)

func TestKey(t *testing.T) {
	tx := policy.NewTransaction(nil, "t")

	_, ok := spfKey.Get(tx)
	assert.False(t, ok)
	spfKey.Set(tx, "pass")
	scoreKey.Set(tx, scoreResult{Score: 4.5, Symbols: []string{"R_SPF_ALLOW"}})
	v, ok := spfKey.Get(tx)
	assert.True(t, ok)
	assert.Equal(t, "pass", v)
	sc, ok := scoreKey.Get(tx)
	assert.True(t, ok)
	assert.Equal(t, 4.5, sc.Score)
	_, ok = clashKey.Get(tx)
	assert.False(t, ok, "a value of another type is absent")
	spfKey.Set(tx, "fail")
	v, _ = spfKey.Get(tx)
	assert.Equal(t, "fail", v)

	_, ok = spfKey.Get(policy.NewTransaction(nil, "other"))
	assert.False(t, ok, "values belong to their transaction")
}

// TestKeyQueueRoundTrip is what the queue does: encode the values with the
// envelope, rebuild the transaction later, and read them with their keys.
func TestKeyQueueRoundTrip(t *testing.T) {
	tx := policy.NewTransaction(nil, "t")
	enc, err := tx.EncodeValues()
	require.NoError(t, err)
	assert.Nil(t, enc, "no values, nothing to keep")

	spfKey.Set(tx, "softfail")
	scoreKey.Set(tx, scoreResult{Score: 7, Symbols: []string{"BAYES_SPAM", "DMARC_NA"}})
	enc, err = tx.EncodeValues()
	require.NoError(t, err)
	assert.JSONEq(t, `"softfail"`, string(enc["test.spf"]))
	assert.JSONEq(t, `{"score":7,"symbols":["BAYES_SPAM","DMARC_NA"]}`, string(enc["test.score"]))

	rebuilt := policy.NewTransaction(nil, "t")
	rebuilt.SetEncodedValues(enc)
	_, ok := clashKey.Get(rebuilt)
	assert.False(t, ok, "a kept value that does not decode as the key's type is absent")
	v, ok := spfKey.Get(rebuilt)
	assert.True(t, ok)
	assert.Equal(t, "softfail", v)
	sc, ok := scoreKey.Get(rebuilt)
	require.True(t, ok)
	assert.Equal(t, scoreResult{Score: 7, Symbols: []string{"BAYES_SPAM", "DMARC_NA"}}, sc)

	// Encoding again keeps the values, decoded or not, for a second trip.
	again, err := rebuilt.EncodeValues()
	require.NoError(t, err)
	assert.JSONEq(t, string(enc["test.spf"]), string(again["test.spf"]))
	assert.JSONEq(t, string(enc["test.score"]), string(again["test.score"]))

	// A value JSON cannot encode is an error, so the queue never
	// acknowledges a message whose results it cannot keep.
	policy.Key[func()]("test.func").Set(tx, func() {})
	_, err = tx.EncodeValues()
	assert.ErrorContains(t, err, "test.func")
}

func TestTransactionState(t *testing.T) {
	tx := policy.NewTransaction(nil, "t")
	assert.Equal(t, "t", tx.ID)
	assert.False(t, tx.Received.IsZero())
	assert.False(t, tx.ForceAccepted())
	tx.SetForceAccepted(true)
	assert.True(t, tx.ForceAccepted())
	tx.SetQuarantine("held")
	assert.Equal(t, "held", tx.Quarantine())

	// The queue rebuilds a quarantined transaction: delivery rules skip it.
	c := policy.NewChain()
	ran := false
	c.Delivery("d", func(context.Context, *policy.Transaction, policy.Recipient, *policy.Route) policy.Verdict {
		ran = true
		return policy.Next()
	})
	r := c.EvalDelivery(context.Background(), tx, policy.Recipient{}, &policy.Route{})
	assert.False(t, ran)
	assert.Equal(t, policy.Quarantine("held"), r.Verdict)
}

func TestConnResetTLS(t *testing.T) {
	c := &policy.Conn{Helo: "x", ESMTP: true, AuthUser: "alice", AuthMechanism: "PLAIN",
		Remote: netip.MustParseAddrPort("192.0.2.1:25")}
	assert.True(t, c.Authenticated())
	st := &tls.ConnectionState{Version: tls.VersionTLS13}
	c.ResetTLS(st)
	assert.Same(t, st, c.TLS)
	assert.Empty(t, c.Helo)
	assert.False(t, c.ESMTP)
	assert.False(t, c.Authenticated())
	assert.Empty(t, c.AuthMechanism)
	assert.Equal(t, "192.0.2.1:25", c.Remote.String(), "the address stays")
}

func TestResolverAtDefault(t *testing.T) {
	// Only identity is checked: no lookup may reach the system resolver.
	assert.Same(t, net.DefaultResolver, policy.ResolverAt(""))
	var _ policy.Resolver = policy.ResolverAt("")
}

func TestResolverAt(t *testing.T) {
	srv := dnstest.New(t,
		`example.com. IN TXT "v=spf1 -all"`,
		`example.com. IN MX 10 mx.example.com.`,
		`mx.example.com. IN A 192.0.2.25`,
	)
	r := policy.ResolverAt(srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	txt, err := r.LookupTXT(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, []string{"v=spf1 -all"}, txt)
	mx, err := r.LookupMX(ctx, "example.com")
	require.NoError(t, err)
	require.Len(t, mx, 1)
	assert.Equal(t, "mx.example.com.", mx[0].Host)
	ips, err := r.LookupIPAddr(ctx, "mx.example.com")
	require.NoError(t, err)
	require.Len(t, ips, 1)
	assert.Equal(t, "192.0.2.25", ips[0].IP.String())
	assert.Positive(t, srv.Queries(), "the queries went to the loopback server")

	// A server that never answers: the lookup ends with the context's
	// deadline, as a rule's timeout requires.
	srv.Timeout("slow.example.com")
	sctx, scancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer scancel()
	done := make(chan error, 1)
	go func() { _, err := r.LookupTXT(sctx, "slow.example.com"); done <- err }()
	select {
	case err := <-done:
		require.Error(t, err)
		var dnsErr *net.DNSError
		require.ErrorAs(t, err, &dnsErr)
		assert.True(t, dnsErr.IsTimeout, "%v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("lookup did not honour the context deadline")
	}
}

// RFC 3207 section 4.2: what was decided on the client's word before
// STARTTLS (helo, auth) is forgotten with it; a decision of the connect
// stage, on the client's address, stays.
func TestResetTLSForgetsPreTLSDecisions(t *testing.T) {
	tests := []struct {
		name      string
		connect   policy.Verdict
		helo      policy.Verdict
		wantForce bool
		wantQuar  string
	}{
		{"force accept at helo", policy.Next(), policy.ForceAccept(), false, ""},
		{"quarantine at helo", policy.Next(), policy.Quarantine("q"), false, ""},
		{"force accept at connect", policy.ForceAccept(), policy.Next(), true, ""},
		{"quarantine at connect", policy.Quarantine("q"), policy.Next(), false, "q"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := policy.NewChain()
			c.Connect("c", func(context.Context, *policy.Conn) policy.Verdict { return tt.connect })
			c.Helo("h", func(_ context.Context, _ *policy.Conn, helo string) policy.Verdict {
				if helo == "trusted.internal" {
					return tt.helo
				}
				return policy.Next()
			})
			ctx := context.Background()
			conn := &policy.Conn{ID: "c"}
			c.EvalConnect(ctx, conn)
			c.EvalHelo(ctx, conn, "trusted.internal") // plaintext, possibly injected
			before := policy.NewTransaction(conn, "t0")
			assert.True(t, before.ForceAccepted() || before.Quarantine() != "", "the decision holds before STARTTLS")

			conn.ResetTLS(&tls.ConnectionState{Version: tls.VersionTLS13})
			r := c.EvalHelo(ctx, conn, "client.example")
			tx := policy.NewTransaction(conn, "t1")
			assert.Equal(t, tt.wantForce, tx.ForceAccepted())
			assert.Equal(t, tt.wantQuar, tx.Quarantine())
			if !tt.wantForce && tt.wantQuar == "" {
				assert.Equal(t, "", r.Rule, "helo rules run again after STARTTLS")
			}
		})
	}
}
