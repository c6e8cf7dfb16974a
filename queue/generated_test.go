package queue

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestGeneratedMark: the postq and delivery rules see the DSNs the
// scheduler generates marked with GeneratedKey (what they report, on which
// message), and no client's message marked; the DSN's From is BounceFrom,
// or MAILER-DAEMON@Hostname by default.
func TestGeneratedMark(t *testing.T) {
	tests := []struct {
		name       string
		bounceFrom policy.Address
		notify     []string
		code       int
		wantFrom   string
		wantReport string
	}{
		{"failed, default From", policy.Address{}, nil, 550, "Mail Delivery System <MAILER-DAEMON@mx.test>", "failed"},
		{"failed, domain From", policy.Address{Local: "MAILER-DAEMON", Domain: "example.org"}, nil, 550, "Mail Delivery System <MAILER-DAEMON@example.org>", "failed"},
		{"delivered, postmaster", policy.Address{Local: "postmaster", Domain: "example.org"}, []string{"SUCCESS"}, 250, "Mail Delivery System <postmaster@example.org>", "delivered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			postq := map[string]Generated{}    // by queue ID: the mark the postq rules saw
			delivery := map[string]Generated{} // and the delivery rules
			seen := map[string]bool{}
			chain := &policy.Chain{Logger: quietLogger()}
			chain.PostQ("look", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
				mu.Lock()
				defer mu.Unlock()
				seen[tx.ID] = true
				if g, ok := GeneratedKey.Get(tx); ok {
					postq[tx.ID] = g
				}
				return policy.Next()
			})
			chain.Delivery("look-delivery", func(ctx context.Context, tx *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
				mu.Lock()
				defer mu.Unlock()
				if g, ok := GeneratedKey.Get(tx); ok {
					delivery[tx.ID] = g
				}
				return policy.Next()
			})
			h := newHarness(t, "", Config{Chain: chain, BounceFrom: tt.bounceFrom})
			h.tr.script = func(rcpt string, n int) policy.Reply {
				if rcpt == "b@example.com" {
					return reply(tt.code, "", "x")
				}
				return reply(250, "2.0.0", "OK")
			}
			h.start()
			tx := newTx("m1", "a@example.org", "b@example.com")
			tx.Rcpts[0].Notify = tt.notify
			h.enqueue(tx, testMsg)
			h.wait("m1")
			dsnID := h.waitOther("m1")
			ds := dsns(h.tr.deliveries())
			require.Len(t, ds, 1)
			d := parseDSN(t, ds[0].Data)
			assert.Equal(t, tt.wantFrom, d.header.Get("From"))

			mu.Lock()
			defer mu.Unlock()
			assert.True(t, seen["m1"])
			assert.NotContains(t, postq, "m1", "a client's message is not marked")
			assert.NotContains(t, delivery, "m1")
			want := Generated{Report: tt.wantReport, Original: "m1"}
			assert.Equal(t, want, postq[dsnID], "postq rules see the DSN marked")
			assert.Equal(t, want, delivery[dsnID], "delivery rules see it marked")
		})
	}
}

// TestGeneratedMarkOldDSN: a DSN queued before the mark existed (its
// envelope says DSN, without the value) is marked all the same.
func TestGeneratedMarkOldDSN(t *testing.T) {
	env := &Envelope{Version: EnvelopeVersion, ID: "d1", DSN: true,
		Rcpts: []RcptState{{Addr: Addr{Local: "a", Domain: "example.org"}, State: RcptPending}}}
	_, ok := GeneratedKey.Get(env.Transaction())
	assert.True(t, ok)
	env.DSN = false
	_, ok = GeneratedKey.Get(env.Transaction())
	assert.False(t, ok)
}
