package policy_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for range 1000 {
		id := policy.NewID()
		require.Len(t, id, 21)
		require.Regexp(t, `^[0-9a-v]+$`, id)
		require.False(t, seen[id])
		seen[id] = true
		require.GreaterOrEqual(t, id[:12], prev[:min(12, len(prev))], "time prefix sorts")
		prev = id
	}
}
