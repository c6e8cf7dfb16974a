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
// stream leader, which has every acknowledged write. With one replica
// direct gets stay on: that replica is the leader.
func (s *Store) leaderReads(ctx context.Context) error {
	if s.cfg.Replicas == 1 {
		return nil // one replica: it is the leader, direct gets read it
	}
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
// TestClusterFaults: a message with its 250 set aside as corrupt), and the
// chunks come from a consumer on any replica, which may lag the leader
// that acknowledged them (a short read). A body is corrupt when at least
// minCorruptReads reads, over a few seconds, all failed so; when ctx ends
// before that, the error is a temporary one (the scheduler tries again
// later) rather than a set-aside.
func (s *Store) openBodySure(ctx context.Context, name string, env *queue.Envelope) (*policy.Message, error) {
	var err error
	for try, pause := 0, 125*time.Millisecond; ; try, pause = try+1, 2*pause {
		if try > 0 {
			if try == maxBodyReads {
				return nil, err
			}
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				if try >= minCorruptReads {
					return nil, err
				}
				return nil, fmt.Errorf("jetstream: body of %s unreadable so far (%d reads): %v", env.ID, try, err)
			case <-t.C:
			}
		}
		var m *policy.Message
		if m, err = s.openBody(ctx, name, env); err == nil || !errors.Is(err, queue.ErrCorrupt) {
			return m, err
		}
	}
}

// A body is read at most maxBodyReads times by openBodySure (pauses of
// 0.25, 0.5, 1 and 2 s between), and called corrupt after at least
// minCorruptReads reads that all found it so.
const (
	maxBodyReads    = 5
	minCorruptReads = 3
)
