// Package kv keeps the state that the nodes of a fleet must agree on in
// NATS JetStream key-value buckets: the rate limits and greylisting
// triplets of the relay package's anti-abuse rules and the AUTH failure
// counts of the auth package.
//
// A Store is one bucket. Its Update is a compare-and-set loop on the
// key's revision (read the value and its revision, compute the new value,
// write it only if the revision is still the one read; on a conflict read
// again), so two nodes counting the same client at the same moment both
// count. A read that changes nothing costs one read and no write. It
// satisfies relay.StateStore and auth.FailureStore without importing
// either:
//
//	nc, _ := nats.Connect("nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
//	js, _ := jetstream.New(nc)
//	rates, _ := kv.Open(ctx, js, kv.Config{Bucket: "mtakit_ratelimit", TTL: time.Hour, Replicas: 3})
//	limiter, _ := relay.NewRateLimiter(relay.RateLimitOptions{Limits: limits, Store: rates})
//
// Values expire with the bucket's TTL, counted from their last write:
// give each bucket a TTL at least as long as its state matters (the
// longest Per of the rate limits; the longer of AllowFor and
// Delay+RetryWindow for greylisting; the longer of Window and Cooldown
// for AUTH failures). Keys are stored base64url-encoded, as bucket keys
// allow only a few characters.
//
// What it promises: a value whose write returned is in the bucket on a
// majority of its replicas (JetStream's acknowledgement); as durable on
// disk as the servers' sync_interval makes it. Reads may come from any
// replica and be a little stale; a stale read only makes the write that
// follows fail its revision check and be retried, so counts are never
// lost. When the bucket cannot be written (a cluster without quorum),
// Update fails within Config.Timeout and each rule applies its own
// policy for that (see relay and auth).
//
// # Configuration and logging
//
// A Store is opened with Open from a Config, whose zero fields are
// documented defaults; it must not be changed once open. The package does
// not log: Update returns its errors to the rule, which logs them with
// its own Logger.
package kv
