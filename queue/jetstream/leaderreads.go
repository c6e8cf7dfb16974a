package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

// leaderReads turns off direct gets on the object store's stream, which
// nats.go turns on for every object store. A direct get is answered by
// any replica, and a replica may lag the quorum that acknowledged a
// write: a body read right after its Enqueue (the scheduler does that at
// once) then looks missing, and the message was set aside as corrupt
// (seen in examples/doe-family's TestClusterFaults with R3: 3 messages
// of ~150 that had their 250). Without direct gets, reads go through the
// stream leader, which has every acknowledged write.
func (s *Store) leaderReads(ctx context.Context) error {
	stream, err := s.js.Stream(ctx, "OBJ_"+s.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("jetstream: object store %s: %w", s.cfg.Bucket, err)
	}
	if cfg := stream.CachedInfo().Config; cfg.AllowDirect {
		cfg.AllowDirect = false
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("jetstream: object store %s: leader reads: %w", s.cfg.Bucket, err)
		}
	}
	// The handle caches the stream's settings: open it again, also when
	// another node turned direct gets off meanwhile (CreateOrUpdateObjectStore
	// turned them on for a moment, and this handle would use them).
	if s.obj, err = s.js.ObjectStore(ctx, s.cfg.Bucket); err != nil {
		return fmt.Errorf("jetstream: object store %s: %w", s.cfg.Bucket, err)
	}
	return nil
}

// openBodySure is openBody, trying again before it calls a body corrupt:
// a read cut by a change of stream leader (a server of the cluster lost)
// fails its digest check once and then reads whole (seen in
// TestClusterFaults: a message with its 250 set aside as corrupt). A
// body that fails three reads a second apart is corrupt.
func (s *Store) openBodySure(ctx context.Context, name string, env *queue.Envelope) (*policy.Message, error) {
	var err error
	for try := range 3 {
		if try > 0 {
			t := time.NewTimer(time.Duration(try) * 500 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-t.C:
			}
		}
		var m *policy.Message
		if m, err = s.openBody(ctx, name, env); err == nil || !errors.Is(err, queue.ErrCorrupt) {
			return m, err
		}
	}
	return nil, err
}
