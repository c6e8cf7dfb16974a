package auth

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// oneValue is a FailureStore holding one value for every key.
type oneValue struct{ v []byte }

func (s *oneValue) Update(_ context.Context, _ string, fn func(old []byte) ([]byte, error)) ([]byte, error) {
	v, err := fn(s.v)
	if err == nil {
		s.v = v
	}
	return v, err
}

// FuzzFailureStore: whatever the shared store holds for a client, Wait,
// Fail and Failures either fail with an error (AUTH then answers 454) or
// keep within bounds: never more than RefuseAfter failures remembered.
func FuzzFailureStore(f *testing.F) {
	f.Add([]byte(`{"times":["2026-12-04T12:00:00Z","2026-12-04T12:00:01Z"]}`))
	f.Add([]byte(`{"times":["9999-12-31T23:59:59Z"],"blocked":"0001-01-01T00:00:01Z"}`))
	f.Add([]byte(`{"blocked":"9999-12-31T23:59:59Z"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, old []byte) {
		lim := &FailureLimiter{MaxFailures: 2, RefuseAfter: 4, Delay: -1, Store: &oneValue{v: old}, now: func() time.Time { return now }}
		ip := netip.MustParseAddr("192.0.2.1")
		ctx := context.Background()
		_ = lim.Wait(ctx, ip)
		if err := lim.Fail(ctx, ip); err != nil {
			return
		}
		n, err := lim.Failures(ctx, ip)
		if err != nil {
			t.Fatalf("after a Fail that stored: %v", err)
		}
		if n > 4 {
			t.Fatalf("state %q: %d failures remembered", old, n)
		}
	})
}
