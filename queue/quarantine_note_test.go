package queue

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestQuarantineNote: the envelope of a quarantined message records the
// rule, the stage and the reason, whichever stage quarantined it.
func TestQuarantineNote(t *testing.T) {
	chain := &policy.Chain{Logger: quietLogger()}
	chain.PreQ("antivirus", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		return policy.QuarantineBecause("virus_q", "X-Virus-Infected: Eicar-Test-Signature")
	})
	chain.PostQ("dmarc", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if tx.ID == "postq" {
			return policy.QuarantineBecause("dmarc", "DMARC fail, p=quarantine")
		}
		return policy.Next()
	})
	chain.Delivery("hold", func(ctx context.Context, tx *policy.Transaction, r policy.Recipient, route *policy.Route) policy.Verdict {
		if tx.ID == "delivery" {
			return policy.Quarantine("held")
		}
		return policy.Next()
	})
	h := newHarness(t, "", Config{Chain: chain})
	h.start()
	preq := newTx("preq", "a@example.org", "b@example.com")
	res := chain.EvalPreQ(context.Background(), preq, newMessage(t, testMsg))
	require.Equal(t, policy.KindQuarantine, res.Verdict.Kind)
	h.enqueue(preq, testMsg)
	h.enqueue(newTx("postq", "a@example.org", "b@example.com"), testMsg)
	h.enqueue(newTx("delivery", "a@example.org", "b@example.com"), testMsg)
	h.wait("postq")
	h.wait("delivery")

	for _, c := range []struct {
		id   string
		want QuarantineNote
	}{
		{"preq", QuarantineNote{Queue: "quarantine/virus_q", Stage: "smtp", Rule: "antivirus", Reason: "X-Virus-Infected: Eicar-Test-Signature"}},
		{"postq", QuarantineNote{Queue: "quarantine/dmarc", Stage: "postq", Rule: "dmarc", Reason: "DMARC fail, p=quarantine"}},
		{"delivery", QuarantineNote{Queue: "quarantine/held", Stage: "delivery", Rule: "hold"}},
	} {
		require.Equal(t, c.want.Queue, h.queueOf(c.id), c.id)
		env := h.envelope(c.id)
		require.NotNil(t, env.Quarantine, c.id)
		got := *env.Quarantine
		assert.False(t, got.At.IsZero(), c.id)
		got.At = c.want.At
		assert.Equal(t, c.want, got, c.id)
	}

}
