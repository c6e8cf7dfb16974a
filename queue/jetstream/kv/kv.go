package kv

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrContention is returned by Update when the key kept changing under it
// for maxTries attempts in a row.
var ErrContention = errors.New("kv: too many concurrent writers of one key")

// maxTries bounds the compare-and-set attempts of one Update; after a
// conflict each waits a random time of up to 1 ms, doubling up to 32 ms,
// so that writers of one hot key (one client on many connections) spread
// out instead of colliding again.
const maxTries = 64

// backoff waits before attempt try (from 1), or until ctx is done.
func backoff(ctx context.Context, try int) error {
	d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(try-1, 5)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Config configures Open.
type Config struct {
	// Bucket is the key-value bucket's name (letters, digits, - and _);
	// required. It is created when missing, and its settings updated to
	// these when it exists.
	Bucket string
	// TTL is how long a value is kept after its last write; zero keeps
	// values forever (not what a limiter wants: its keys are client
	// addresses).
	TTL time.Duration
	// Replicas is the bucket's replica count: 3 in a three-node cluster
	// (R3 survives the loss of one node); zero means 1.
	Replicas int
	// Memory keeps the bucket in the servers' memory instead of on disk:
	// faster, and its values are lost when every replica restarts at
	// once. false means file storage.
	Memory bool
	// Timeout bounds each Update when ctx has no earlier deadline, so
	// that a cluster without quorum delays an SMTP command by at most
	// this; zero means 2 seconds.
	Timeout time.Duration
}

// Store is a JetStream key-value bucket seen as a compare-and-set map
// (relay.StateStore, auth.FailureStore). It is safe for concurrent use.
type Store struct {
	kv      jetstream.KeyValue
	timeout time.Duration
}

// Open creates the bucket cfg describes, or updates its settings, and
// returns the Store.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("kv: Config.Bucket is required")
	}
	if cfg.TTL < 0 || cfg.Replicas < 0 || cfg.Timeout < 0 {
		return nil, errors.New("kv: negative TTL, Replicas or Timeout")
	}
	storage := jetstream.FileStorage
	if cfg.Memory {
		storage = jetstream.MemoryStorage
	}
	kcfg := jetstream.KeyValueConfig{Bucket: cfg.Bucket, TTL: cfg.TTL, Replicas: max(cfg.Replicas, 1), Storage: storage, History: 1,
		Description: "mtakit shared state"}
	kv, err := js.CreateOrUpdateKeyValue(ctx, kcfg)
	if err != nil {
		return nil, fmt.Errorf("kv: bucket %s: %w", cfg.Bucket, err)
	}
	s := &Store{kv: kv, timeout: cfg.Timeout}
	if s.timeout == 0 {
		s.timeout = 2 * time.Second
	}
	return s, nil
}

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.kv.Bucket() }

// encodeKey maps any string to a valid bucket key.
func encodeKey(key string) string {
	if key == "" {
		return "_"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

// Update replaces the value of key with what fn returns given the current
// one (nil when there is none or it expired), with a compare-and-set on
// the key's revision: when another writer changed the value in between,
// fn is called again with the new value. When fn returns a value equal to
// old nothing is written. An error of fn ends Update with that error. It
// returns the value stored.
func (s *Store) Update(ctx context.Context, key string, fn func(old []byte) ([]byte, error)) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	k := encodeKey(key)
	for try := range maxTries {
		if try > 0 {
			if err := backoff(ctx, try); err != nil {
				return nil, fmt.Errorf("kv: %s: %w (%w)", s.kv.Bucket(), ErrContention, err)
			}
		}
		var old []byte
		var rev uint64
		e, err := s.kv.Get(ctx, k)
		switch {
		case err == nil:
			old, rev = e.Value(), e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return nil, fmt.Errorf("kv: %s: get: %w", s.kv.Bucket(), err)
		}
		v, err := fn(bytes.Clone(old))
		if err != nil {
			return nil, err
		}
		if bytes.Equal(v, old) {
			return v, nil
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, k, v)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
		} else {
			_, err = s.kv.Update(ctx, k, v, rev)
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("kv: %s: write: %w", s.kv.Bucket(), err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("kv: %s: %w", s.kv.Bucket(), ErrContention)
}
