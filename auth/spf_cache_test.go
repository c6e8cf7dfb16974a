package auth

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
	"github.com/mtakit/mtakit/policy"
)

// TestSPFHeloCache: a session sending several messages has its HELO checked
// once; another client address, or the cache turned off, looks it up again.
func TestSPFHeloCache(t *testing.T) {
	srv := dnstest.New(t,
		`mail.pass.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`pass.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
	)
	heloQueries := func() int {
		n := 0
		for _, q := range srv.QueryLog() {
			if q.Name == "mail.pass.test." {
				n++
			}
		}
		return n
	}
	ctx := context.Background()
	run := func(rule policy.MailRule, ip string) SPFResult {
		tx := spfTx(ip, "mail.pass.test", "a@pass.test", "")
		rule(ctx, tx)
		r, ok := SPFResultKey.Get(tx)
		require.True(t, ok)
		return r
	}

	cached := CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFStrict, Resolver: srv.Resolver(), Receiver: "mx.test"})
	for range 5 {
		assert.Equal(t, SPFPass, run(cached, "192.0.2.10").Result)
	}
	assert.Equal(t, 1, heloQueries(), "the HELO identity is looked up once for five messages")
	run(cached, "192.0.2.11")
	assert.Equal(t, 2, heloQueries(), "another client address is checked anew")

	srv.ResetQueries()
	uncached := CheckSPF(SPFOptions{Identity: SPFBoth, Mode: SPFStrict, Resolver: srv.Resolver(), Receiver: "mx.test", HeloCacheTTL: -1})
	for range 3 {
		run(uncached, "192.0.2.10")
	}
	assert.Equal(t, 3, heloQueries(), "SPFHeloCache(0) turns the cache off")
}

func TestHeloCacheExpiresAndSkipsTempError(t *testing.T) {
	c := &heloCache{ttl: time.Minute, entries: map[heloKey]heloEntry{}}
	ip := spfTx("192.0.2.1", "h.test", "a@b.test", "").Conn.Remote.Addr()
	now := time.Now()
	c.put(ip, "h.test", SPFResult{Result: SPFTempError}, now)
	_, ok := c.get(ip, "h.test", now)
	assert.False(t, ok, "a temperror is never cached")
	c.put(ip, "h.test", SPFResult{Result: SPFPass}, now)
	_, ok = c.get(ip, "h.test", now.Add(30*time.Second))
	assert.True(t, ok)
	_, ok = c.get(ip, "h.test", now.Add(2*time.Minute))
	assert.False(t, ok, "expired")
	for i := range maxHeloEntries + 10 {
		c.put(ip, string(rune('a'+i%26))+time.Duration(i).String(), SPFResult{Result: SPFPass}, now)
	}
	assert.LessOrEqual(t, len(c.entries), maxHeloEntries, "bounded")
}
