package relay_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

// TestCheckHeloOverSockets sends EHLO to mtakit's SMTP server on loopback.
func TestCheckHeloOverSockets(t *testing.T) {
	chain := policy.NewChain().Helo("helo", relay.CheckHelo(relay.HeloOptions{
		Names:    []string{"mx.local.test", "Local.Test."},
		Addrs:    []netip.Addr{netip.MustParseAddr("192.0.2.25"), netip.MustParseAddr("2001:db8::25")},
		Internal: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
	}))
	chain.Rcpt("local", acceptLocal)
	mta, sub := abServe(t, chain)
	tests := []struct {
		name, client, helo, want string
	}{
		{"a host name", "127.0.0.2", "mail.other.test", "250"},
		{"an address literal", "127.0.0.2", "[198.51.100.7]", "250"},
		{"an IPv6 literal", "127.0.0.2", "[IPv6:2001:db8::7]", "250"},
		{"no dot", "127.0.0.2", "laptop", "504 5.5.2 <laptop>: Helo command rejected: need fully-qualified hostname"},
		{"a bare IP address", "127.0.0.2", "198.51.100.7", "501 5.5.2 <198.51.100.7>: Helo command rejected: Invalid name"},
		{"bad characters", "127.0.0.2", "mail!other.test", "501 5.5.2 <mail!other.test>: Helo command rejected: Invalid name"},
		{"an IPv6 literal without its tag", "127.0.0.2", "[2001:db8::7]", "501 5.5.2"},
		{"our host name", "127.0.0.2", "MX.local.test", "550 5.7.1 <MX.local.test>: Helo command rejected: that is our own name"},
		{"our domain", "127.0.0.2", "local.test", "550 5.7.1"},
		{"our address", "127.0.0.2", "[192.0.2.25]", "550 5.7.1 <[192.0.2.25]>: Helo command rejected: that is our own name"},
		{"our IPv6 address", "127.0.0.2", "[IPv6:2001:DB8::25]", "550 5.7.1"},
		{"the address it connected to", "127.0.0.2", "[127.0.0.1]", "550 5.7.1"},
		{"a subdomain of ours is not ours", "127.0.0.2", "host.local.test", "250"},
		{"internal clients are not checked", "127.0.0.9", "mx.local.test", "250"},
		{"internal clients may say anything", "127.0.0.9", "laptop", "250"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := abDial(t, mta, tt.client)
			got := c.cmd("EHLO " + tt.helo)
			assert.True(t, strings.HasPrefix(got, tt.want), "EHLO %s: %q", tt.helo, got)
			if strings.HasPrefix(tt.want, "5") {
				// The session goes on: the client may try again.
				assert.True(t, strings.HasPrefix(c.cmd("EHLO mail.other.test"), "250"))
			}
		})
	}

	t.Run("after AUTH our name is allowed, bad syntax is not", func(t *testing.T) {
		c := abDial(t, sub, "127.0.0.2")
		c.login("alice@local.test", "pw")
		// RFC 5321: a new EHLO resets the session but not the
		// authentication the server keeps.
		// The smtp package judges a second EHLO when it can, and
		// answers a refusal at the next MAIL.
		require.True(t, strings.HasPrefix(c.cmd("EHLO mx.local.test"), "250"))
		got := c.cmd("MAIL FROM:<alice@local.test>")
		assert.True(t, strings.HasPrefix(got, "250"), got)
		require.True(t, strings.HasPrefix(c.cmd("RSET"), "250"))
		require.True(t, strings.HasPrefix(c.cmd("EHLO bad!name"), "250"))
		got = c.cmd("MAIL FROM:<alice@local.test>")
		assert.True(t, strings.HasPrefix(got, "501 5.5.2 <bad!name>"), got)
	})
}

func TestCheckHeloOptions(t *testing.T) {
	single := policy.NewChain().Helo("helo", relay.CheckHelo(relay.HeloOptions{AllowSingleLabel: true, Names: []string{"mx.local.test"}})).Rcpt("local", acceptLocal)
	for _, tt := range []struct {
		s    policytest.Session
		want int
	}{
		{policytest.Session{Helo: "laptop"}, 250},
		{policytest.Session{Helo: "lap top"}, 501},
		{policytest.Session{Helo: "mx.local.test"}, 550},
		{policytest.Session{Helo: "[192.0.2.254]"}, 550}, // policytest's local address
	} {
		out, err := policytest.Run(context.Background(), single, tt.s)
		require.NoError(t, err)
		assert.Equal(t, tt.want, out.Helo.Reply.Code, tt.s.Helo)
	}
}
