package relay_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/relay"
)

func TestInDomain(t *testing.T) {
	tests := []struct {
		addr    string
		domains []string
		want    bool
	}{
		{"u@local.test", []string{"local.test"}, true},
		{"u@LOCAL.TEST.", []string{"Local.Test."}, true},
		{"u@xlocal.test", []string{"local.test"}, false},
		{"u@local.test.evil", []string{"local.test"}, false},
		{"u@sub.local.test", []string{"local.test"}, false},
		{"u@[127.0.0.1]", []string{"local.test", "[127.0.0.1]"}, false},
		{"postmaster", []string{"local.test"}, true},
		{"PostMaster", []string{"local.test"}, true},
		{"u@bücher.test", []string{"xn--bcher-kva.test"}, true},
		{"u@xn--bcher-kva.test", []string{"BÜCHER.test"}, true},
		{"<>", []string{"local.test"}, false},
		{"u@local.test", nil, false},
		{"u@local.test", []string{"bad domain!", ""}, false},
	}
	for _, tc := range tests {
		a := policy.MustParseAddress(tc.addr)
		assert.Equal(t, tc.want, relay.InDomain(a, tc.domains...), "%s in %v", tc.addr, tc.domains)
	}
}

func TestInNetworks(t *testing.T) {
	nets, err := relay.ParsePrefixes("192.168.1.0/24, 10.0.0.1 2001:db8::/32 ::ffff:172.16.0.0/108")
	require.NoError(t, err)
	tests := []struct {
		ip   string
		want bool
	}{
		{"192.168.1.77", true},
		{"192.168.2.1", false},
		{"10.0.0.1", true},
		{"10.0.0.2", false},
		{"::ffff:192.168.1.5", true}, // 4-in-6 client on a dual-stack listener
		{"::ffff:10.0.0.1", true},
		{"172.16.3.4", true}, // from the mapped prefix
		{"2001:db8::1", true},
		{"2001:db9::1", false},
		{"fe80::1%eth0", false},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, relay.InNetworks(netip.MustParseAddr(tc.ip), nets), tc.ip)
	}
	assert.False(t, relay.InNetworks(netip.Addr{}, nets))
	// A mapped prefix given by hand (not through ParsePrefixes) still
	// matches the IPv4 client.
	assert.True(t, relay.InNetworks(netip.MustParseAddr("10.9.9.9"), []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}))
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", []string{}, false},
		{"192.168.1.0/24,10.0.0.1", []string{"192.168.1.0/24", "10.0.0.1/32"}, false},
		{" 10.1.2.3/8 ,\t::1 ", []string{"10.0.0.0/8", "::1/128"}, false},
		{"::ffff:10.0.0.1", []string{"10.0.0.1/32"}, false},
		{"::ffff:10.0.0.0/104", []string{"10.0.0.0/8"}, false},
		{"::ffff:0:0/64", nil, true},
		{"10.0.0.0/33", nil, true},
		{"example.com", nil, true},
		{"fe80::1%eth0", nil, true},
	}
	for _, tc := range tests {
		got, err := relay.ParsePrefixes(tc.in)
		if tc.wantErr {
			assert.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		s := []string{}
		for _, p := range got {
			s = append(s, p.String())
		}
		assert.Equal(t, tc.want, s, tc.in)
	}
}

func FuzzParsePrefixes(f *testing.F) {
	for _, s := range []string{"192.168.1.0/24,10.0.0.1", "::ffff:10.0.0.0/104", "::1", "", ",,", "1.2.3.4/0", "::ffff:1.2.3.4/96"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := relay.ParsePrefixes(s)
		if err != nil {
			return
		}
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() {
				t.Fatalf("%q gave non-canonical prefix %v", s, p)
			}
			if !relay.InNetworks(p.Addr(), ps) {
				t.Fatalf("%v not in its own list", p)
			}
		}
	})
}

// Without a connection (a transaction rebuilt from the queue) the rules
// treat the client as outside and unauthenticated.
func TestRulesWithoutConn(t *testing.T) {
	p := relay.NewPolicy(nil, "local.test")
	tx := policy.NewTransaction(nil, "t1")
	tx.From = policy.MustParseAddress("a@local.test")
	ctx := context.Background()
	assert.Equal(t, policy.KindDeny, p.MailRule()(ctx, tx).Kind)
	tx.From = policy.Address{}
	assert.Equal(t, policy.KindNext, p.MailRule()(ctx, tx).Kind)
	assert.Equal(t, policy.KindAccept, p.RcptRule()(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("postmaster")}).Kind)
	v := p.Rule()(ctx, tx, policy.Recipient{Addr: policy.MustParseAddress("u@other.test")})
	assert.Equal(t, policy.Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}, v.Reply)
	assert.True(t, p.LocalAccount("Alice@Local.Test"))
	assert.False(t, p.LocalAccount("alice"))
	assert.False(t, p.LocalAccount("alice@other.test"))
}

func BenchmarkCheckRelay(b *testing.B) {
	internal, _ := relay.ParsePrefixes("10.0.0.0/8, 192.168.0.0/16, ::1")
	rule := relay.CheckRelay(internal, "local.test", "example.com", "example.org")
	conn := &policy.Conn{Remote: netip.MustParseAddrPort("203.0.113.9:4000")}
	tx := policy.NewTransaction(conn, "t")
	tx.From = policy.MustParseAddress("x@other.test")
	rcpts := []policy.Recipient{
		{Addr: policy.MustParseAddress("u@local.test")},
		{Addr: policy.MustParseAddress("u@other.test")},
	}
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rule(ctx, tx, rcpts[i&1])
	}
}
