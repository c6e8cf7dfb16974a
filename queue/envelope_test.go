package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestAddrString: an Addr prints as the policy.Address it stores, and
// survives the envelope round trip printing the same.
func TestAddrString(t *testing.T) {
	for _, tt := range []struct {
		addr policy.Address
		want string
	}{
		{policy.Address{Local: "john", Domain: "example.com"}, "john@example.com"},
		{policy.Address{Local: "john doe", Domain: "example.com"}, `"john doe"@example.com`},
		{policy.Address{Local: "postmaster"}, "postmaster"},
		{policy.Address{}, ""},
	} {
		t.Run(tt.addr.Local, func(t *testing.T) {
			a := toAddr(tt.addr)
			assert.Equal(t, tt.want, a.String())
			env, err := DecodeEnvelope(mustEncode(t, &Envelope{Version: EnvelopeVersion, ID: "e1", From: a, Rcpts: []RcptState{{Addr: Addr{Local: "b", Domain: "example.com"}, State: RcptPending}}}))
			require.NoError(t, err)
			assert.Equal(t, tt.want, env.From.String())
		})
	}
}

func mustEncode(t *testing.T, env *Envelope) []byte {
	t.Helper()
	b, err := env.Encode()
	require.NoError(t, err)
	return b
}
