package queue

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// A message whose postq edits (a DKIM-Signature) are stored in its
// envelope, moved back to working so that the postq rules run again, must
// get them once: the rules run on the message as received, not on the
// message they already edited.
func TestMoveToWorkingDoesNotRepeatPostQEdits(t *testing.T) {
	const sig = "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=abc\r\n"
	tests := []struct {
		name string
		hold bool // the first postq run quarantines (edits kept with it)
	}{
		{"released from quarantine to working", true},
		{"deferred message moved to working", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := true
			chain := policy.NewChain(policy.WithLogger(quietLogger()))
			chain.PostQ("sign", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
				m.Header.AddRaw([]byte(sig))
				if tt.hold && first {
					first = false
					return policy.Quarantine("hold")
				}
				return policy.Next
			})
			h := newHarness(t, "", Config{Chain: chain})
			if !tt.hold {
				h.tr.script = func(rcpt string, n int) policy.Reply {
					if n == 0 {
						return reply(451, "4.4.1", "later")
					}
					return reply(250, "2.0.0", "OK")
				}
			}
			h.start()
			h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
			h.wait("m1")
			if tt.hold {
				require.Equal(t, "quarantine/hold", h.queueOf("m1"))
			} else {
				require.Equal(t, Deferred, h.queueOf("m1"))
			}
			require.NoError(t, h.sp.Move(context.Background(), "m1", Working))
			h.wait("m1")
			h.clock.Advance(time.Minute)
			require.Equal(t, "", h.queueOf("m1"), "delivered")
			ds := h.tr.deliveries()
			require.NotEmpty(t, ds)
			last := string(ds[len(ds)-1].Data)
			assert.Equal(t, 1, strings.Count(last, "DKIM-Signature:"), "postq edits applied once:\n%s", last)
			assert.Equal(t, sig+testMsg, last)
		})
	}
}
