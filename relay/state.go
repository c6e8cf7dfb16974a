package relay

import (
	"context"
	"encoding/json"
	"time"
)

// StateStore keeps state that several nodes share: a map from keys to
// values that change only by compare-and-set, so that two nodes counting
// the same client at once both count. RateLimitOptions.Store and
// GreylistOptions.Store take one; without it, each RateLimiter and
// Greylist keeps its state in its own memory (and Greylist in its Dir),
// the single-node default. The JetStream key-value store of
// github.com/mtakit/mtakit/queue/jetstream/kv satisfies it.
//
// Values expire: a store drops a value that was not written for longer
// than its time-to-live, which must be at least as long as the state
// matters (for a RateLimiter the longest Per of its limits; for a
// Greylist the longer of AllowFor and Delay+RetryWindow). The rules never
// depend on a value being dropped, only on its being kept that long.
type StateStore interface {
	// Update replaces the value of key with what fn returns given the
	// current one (nil when there is none), atomically: when another
	// writer changed the value between the read and the write, fn is
	// called again with the new value. When fn returns a value equal to
	// old nothing is written, so a read costs no write. An error of fn
	// ends Update with that error. Update returns the value stored.
	Update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) ([]byte, error)
}

// bucketState is a token bucket as a StateStore keeps it: the tokens left
// at a time. A bucket not in the store is full.
type bucketState struct {
	Tokens float64 `json:"t"`
	At     int64   `json:"at"` // Unix nanoseconds
}

// takeToken is the update of a token bucket holding at most r.N tokens
// and refilling r.N per r.Per: it takes one token at now when there is
// one. allowed is set by each call, so after Update it holds the outcome
// of the value that was stored. A bucket refused is left as it was, so a
// refusal writes nothing.
func takeToken(r Rate, now time.Time, allowed *bool) func(old []byte) ([]byte, error) {
	return func(old []byte) ([]byte, error) {
		b := bucketState{Tokens: float64(r.N), At: now.UnixNano()}
		if old != nil {
			var prev bucketState
			if err := json.Unmarshal(old, &prev); err != nil {
				return nil, err
			}
			// Another node's clock may be a little ahead: time does not
			// run backwards for the bucket.
			elapsed := max(now.UnixNano()-prev.At, 0)
			b.Tokens = min(float64(r.N), prev.Tokens+float64(elapsed)*float64(r.N)/float64(r.Per))
			b.At = max(now.UnixNano(), prev.At)
		}
		*allowed = b.Tokens >= 1
		if !*allowed {
			return old, nil
		}
		b.Tokens--
		return json.Marshal(b)
	}
}
