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
// nats.go turns on for every object store, and keeps a handle of that
// stream for readObject. A direct get is answered by any replica, and a
// replica may lag the quorum that acknowledged a write: a body read right
// after its Enqueue (the scheduler does that at once) could look missing
// or short. Without direct gets, reads go through the stream leader, which
// has every acknowledged write. With one replica direct gets stay on:
// that replica is the leader. (The handle caches the settings it read, so
// it is kept only once it has read them off: another node's Open turns
// them on for a moment.) The object store's own handle, used to store and
// delete bodies, is opened again for the same reason.
func (s *Store) leaderReads(ctx context.Context) error {
	name := "OBJ_" + s.cfg.Bucket
	for try := 0; ; try++ {
		stream, err := s.js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("jetstream: object store %s: %w", s.cfg.Bucket, err)
		}
		cfg := stream.CachedInfo().Config
		if s.cfg.Replicas == 1 || !cfg.AllowDirect {
			// The handle caches the settings it read: it reads through
			// the leader, or (one replica) directly from it.
			s.objStream = stream
			break
		}
		if try == 3 {
			return fmt.Errorf("jetstream: object store %s: direct gets turned on again and again (nodes starting?)", s.cfg.Bucket)
		}
		cfg.AllowDirect = false
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("jetstream: object store %s: leader reads: %w", s.cfg.Bucket, err)
		}
	}
	if s.cfg.Replicas == 1 {
		return nil
	}
	var err error
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
