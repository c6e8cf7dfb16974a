package relay

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// oneValue is a StateStore holding one value for every key.
type oneValue struct{ v []byte }

func (s *oneValue) Update(_ context.Context, _ string, fn func(old []byte) ([]byte, error)) ([]byte, error) {
	v, err := fn(s.v)
	if err == nil {
		s.v = v
	}
	return v, err
}

// FuzzSharedState: whatever another node (or a corrupted bucket) left in
// the shared store, the token bucket and the greylist either fail with an
// error (a rule then applies its failure policy) or decide within bounds:
// a token taken leaves 0..N-1 tokens, a refusal writes nothing, a
// greylisting wait is at most Delay.
func FuzzSharedState(f *testing.F) {
	f.Add([]byte(`{"t":3.5,"at":1764849600000000000}`))
	f.Add([]byte(`{"t":-1e308,"at":-9223372036854775808}`))
	f.Add([]byte(`{"first":"2026-12-01T12:00:00Z","last":"2026-12-01T12:00:00Z","passed":true}`))
	f.Add([]byte(`{"first":"9999-12-31T23:59:59Z","last":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{`))
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, old []byte) {
		r := Rate{N: 5, Per: time.Minute}
		var ok bool
		v, err := takeToken(r, now, &ok)(old)
		if err == nil && ok {
			var b bucketState
			if err := json.Unmarshal(v, &b); err != nil {
				t.Fatalf("stored %q: %v", v, err)
			}
			if !(b.Tokens >= 0 && b.Tokens <= float64(r.N-1)) {
				t.Fatalf("a token taken from %q leaves %v", old, b.Tokens)
			}
		}
		if err == nil && !ok && string(v) != string(old) {
			t.Fatalf("a refusal wrote %q over %q", v, old)
		}

		g, err := NewGreylist(GreylistOptions{Store: &oneValue{v: old}, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		wait, err := g.check(context.Background(), "k")
		if err == nil && (wait < 0 || wait > g.opts.Delay) {
			t.Fatalf("state %q: wait %v", old, wait)
		}
	})
}
