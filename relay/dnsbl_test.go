package relay_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

func TestParseDNSBLZone(t *testing.T) {
	tests := []struct {
		in      string
		want    relay.DNSBLZone
		wantErr string
	}{
		{in: "zen.spamhaus.org", want: relay.DNSBLZone{Zone: "zen.spamhaus.org"}},
		{in: "zen.spamhaus.org=127.0.0.[2..11]*3", want: relay.DNSBLZone{Zone: "zen.spamhaus.org", Codes: "127.0.0.[2..11]", Weight: 3}},
		{in: "list.dnswl.org=127.0.[0..255].[1;3]*-5", want: relay.DNSBLZone{Zone: "list.dnswl.org", Codes: "127.0.[0..255].[1;3]", Weight: -5}},
		{in: " bl.test*2 ", want: relay.DNSBLZone{Zone: "bl.test", Weight: 2}},
		{in: "bl.test*1", want: relay.DNSBLZone{Zone: "bl.test", Weight: 1}},
		{in: "bl.test*0", wantErr: "bad weight"},
		{in: "bl.test*x", wantErr: "bad weight"},
		{in: "", wantErr: "bad zone name"},
		{in: "localhost", wantErr: "bad zone name"},
		{in: "bad..name", wantErr: "bad zone name"},
		{in: "bl.test=127.0.0", wantErr: "four octets"},
		{in: "bl.test=127.0.0.256", wantErr: "bad octet"},
		{in: "bl.test=127.0.0.[5..2]", wantErr: "bad range"},
		{in: "bl.test=127.0.0.[2..", wantErr: "bad octet"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := relay.ParseDNSBLZone(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			again, err := relay.ParseDNSBLZone(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, again, "String reads back")
		})
	}
}

// dnsblZoneFile lists 127.0.0.2 to .9 in bl.test, mapped as the tests
// below need, and 2001:db8::2 over IPv6.
var dnsblZoneFile = []string{
	`2.0.0.127.bl.test. A 127.0.0.2`,        // listed, a counted code
	`3.0.0.127.bl.test. A 127.0.0.99`,       // answered a code the mapping does not count
	`4.0.0.127.bl.test. A 127.0.0.4`,        // listed, but also allow-listed
	`4.0.0.127.wl.test. A 127.0.10.2`,       //
	`6.0.0.127.bl.test. A 127.0.0.2`,        // listed in both block lists
	`6.0.0.127.bl2.test. A 127.0.0.2`,       //
	`7.0.0.127.bl2.test. A 127.0.0.2`,       // only the second list, weight 1 < threshold 2
	`8.0.0.127.bl2.test. A 127.255.255.254`, // the list's "query refused" code
	`2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test. A 127.0.0.2`,
}

func newTestDNSBL(t *testing.T, r policy.Resolver, tempFail bool) *relay.DNSBL {
	t.Helper()
	d, err := relay.NewDNSBL(relay.DNSBLOptions{
		Zones: []relay.DNSBLZone{
			{Zone: "bl.test", Codes: "127.0.0.[2..11]", Weight: 2},
			{Zone: "bl2.test"},
			{Zone: "wl.test", Codes: "127.0.[0..255].[1..3]", Weight: -5},
		},
		Threshold: 2,
		Resolver:  r,
		TempFail:  tempFail,
		Internal:  []netip.Prefix{netip.MustParsePrefix("127.0.0.10/32")},
	})
	require.NoError(t, err)
	return d
}

func TestDNSBLCheck(t *testing.T) {
	srv := dnstest.New(t, dnsblZoneFile...)
	srv.Fail("5.0.0.127.bl.test.", dns.RcodeServerFailure)
	d := newTestDNSBL(t, srv.Resolver(), false)
	tests := []struct {
		ip      string
		score   int
		listed  []string
		blocked bool
		allowed bool
		failed  []string
	}{
		{ip: "127.0.0.2", score: 2, listed: []string{"bl.test"}, blocked: true},
		{ip: "127.0.0.3"},
		{ip: "127.0.0.4", score: -3, listed: []string{"bl.test", "wl.test"}, allowed: true},
		{ip: "127.0.0.5", failed: []string{"bl.test"}},
		{ip: "127.0.0.6", score: 3, listed: []string{"bl.test", "bl2.test"}, blocked: true},
		{ip: "127.0.0.7", score: 1, listed: []string{"bl2.test"}},
		{ip: "127.0.0.8"},
		{ip: "127.0.0.9"},
		{ip: "2001:db8::2", score: 2, listed: []string{"bl.test"}, blocked: true},
		{ip: "2001:db8::3"},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			r := d.Check(context.Background(), netip.MustParseAddr(tt.ip))
			var zones []string
			for _, l := range r.Listed {
				zones = append(zones, l.Zone)
			}
			assert.Equal(t, tt.ip, r.Client.String())
			assert.Equal(t, tt.score, r.Score)
			assert.Equal(t, tt.listed, zones)
			assert.Equal(t, tt.blocked, r.Blocked)
			assert.Equal(t, tt.allowed, r.Allowed)
			assert.Equal(t, tt.failed, r.Failed)

			// The result survives the queue.
			b, err := json.Marshal(r)
			require.NoError(t, err)
			var back relay.DNSBLResult
			require.NoError(t, json.Unmarshal(b, &back))
			assert.Equal(t, r, back)
		})
	}
}

func TestNewDNSBLErrors(t *testing.T) {
	_, err := relay.NewDNSBL(relay.DNSBLOptions{})
	assert.ErrorContains(t, err, "no zones")
	_, err = relay.NewDNSBL(relay.DNSBLOptions{Zones: []relay.DNSBLZone{{Zone: "bl.test", Codes: "1.2.3"}}})
	assert.ErrorContains(t, err, "four octets")
}

// TestDNSBLOverSockets runs the rules in mtakit's SMTP server, a client
// per source address on loopback, against a DNS server on loopback.
func TestDNSBLOverSockets(t *testing.T) {
	srv := dnstest.New(t, dnsblZoneFile...)
	srv.Fail("5.0.0.127.bl.test.", dns.RcodeServerFailure)
	const refused2 = "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.test"
	tests := []struct {
		name     string
		stage    policy.Stage // where the rule is registered
		tempFail bool
		client   string
		auth     bool
		greeting string // prefix of the greeting
		mail     string // prefix of the reply to MAIL
		rcpt     string // prefix of the reply to RCPT
	}{
		{name: "listed refused at connect", stage: policy.StageConnect, client: "127.0.0.2", greeting: refused2},
		{name: "listed on IPv4 of both lists", stage: policy.StageConnect, client: "127.0.0.6", greeting: "554 5.7.1 Service unavailable; Client host [127.0.0.6] blocked using bl.test"},
		{name: "not listed", stage: policy.StageConnect, client: "127.0.0.3", greeting: "220", mail: "250", rcpt: "250"},
		{name: "below threshold", stage: policy.StageConnect, client: "127.0.0.7", greeting: "220", mail: "250", rcpt: "250"},
		{name: "allow list wins", stage: policy.StageConnect, client: "127.0.0.4", greeting: "220", mail: "250", rcpt: "250"},
		{name: "refused code is no listing", stage: policy.StageConnect, client: "127.0.0.8", greeting: "220", mail: "250", rcpt: "250"},
		{name: "internal not checked", stage: policy.StageConnect, client: "127.0.0.10", greeting: "220", mail: "250", rcpt: "250"},
		{name: "DNS failure passes", stage: policy.StageConnect, client: "127.0.0.5", greeting: "220", mail: "250", rcpt: "250"},
		{name: "DNS failure tempfails", stage: policy.StageConnect, tempFail: true, client: "127.0.0.5", greeting: "421 4.7.1 Service unavailable; DNS list lookup failed"},
		{name: "listed refused at mail", stage: policy.StageMail, client: "127.0.0.2", greeting: "220", mail: refused2},
		{name: "listed refused at rcpt", stage: policy.StageRcpt, client: "127.0.0.2", greeting: "220", mail: "250", rcpt: refused2},
		{name: "authenticated not checked at rcpt", stage: policy.StageRcpt, client: "127.0.0.2", auth: true, greeting: "220", mail: "250", rcpt: "250"},
		{name: "DNS failure tempfails at rcpt", stage: policy.StageRcpt, tempFail: true, client: "127.0.0.5", greeting: "220", mail: "250", rcpt: "451 4.7.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestDNSBL(t, srv.Resolver(), tt.tempFail)
			chain := policy.NewChain()
			var stored relay.DNSBLResult
			switch tt.stage {
			case policy.StageConnect:
				chain.Connect("dnsbl", d.ConnectRule())
			case policy.StageMail:
				chain.Mail("dnsbl", d.MailRule())
			case policy.StageRcpt:
				chain.Rcpt("dnsbl", d.RcptRule())
			}
			chain.Rcpt("local", func(ctx context.Context, tx *policy.Transaction, r policy.Recipient) policy.Verdict {
				stored, _ = relay.DNSBLResultKey.Get(tx)
				return acceptLocal(ctx, tx, r)
			})
			mta, sub := abServe(t, chain)
			addr := mta
			if tt.auth {
				addr = sub
			}
			c := abDial(t, addr, tt.client)
			require.True(t, strings.HasPrefix(c.greeting, tt.greeting), "greeting %q", c.greeting)
			if tt.mail == "" {
				return
			}
			if tt.auth {
				c.login("alice@local.test", "pw")
			} else {
				require.True(t, strings.HasPrefix(c.cmd("EHLO client.example"), "250"))
			}
			got := c.cmd("MAIL FROM:<x@other.test>")
			require.True(t, strings.HasPrefix(got, tt.mail), "MAIL: %q", got)
			if tt.rcpt == "" {
				return
			}
			got = c.cmd("RCPT TO:<user@local.test>")
			require.True(t, strings.HasPrefix(got, tt.rcpt), "RCPT: %q", got)
			if tt.stage == policy.StageRcpt && strings.HasPrefix(got, "250") && !tt.auth {
				assert.Equal(t, tt.client, stored.Client.String(), "the result is stored for later rules")
			}
		})
	}
}

func TestDNSBLWithPolicytestResolver(t *testing.T) {
	r := &policytest.Resolver{
		IP:       map[string][]string{"2.2.0.192.bl.test": {"127.0.0.2"}},
		Timeout:  []string{"3.2.0.192.bl.test"},
		ServFail: []string{"4.2.0.192.bl.test"},
	}
	d, err := relay.NewDNSBL(relay.DNSBLOptions{Zones: []relay.DNSBLZone{{Zone: "bl.test"}}, Resolver: r, TempFail: true})
	require.NoError(t, err)
	chain := policy.NewChain().Mail("dnsbl", d.MailRule()).Rcpt("local", acceptLocal)
	for _, tt := range []struct{ ip, want string }{
		{"192.0.2.1", "250"},
		{"192.0.2.2", "554 5.7.1 Service unavailable; Client host [192.0.2.2] blocked using bl.test"},
		{"192.0.2.3", "451 4.7.1"},
		{"192.0.2.4", "451 4.7.1"},
	} {
		out, err := policytest.Run(context.Background(), chain, policytest.Session{Remote: tt.ip + ":4000", From: "x@other.test", Rcpts: []string{"u@local.test"}})
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(out.Mail.Reply.String(), tt.want), "%s: %s", tt.ip, out.Mail.Reply)
		res, ok := relay.DNSBLResultKey.Get(out.Tx)
		require.True(t, ok)
		assert.Equal(t, tt.ip, res.Client.String())
	}
}
