package queue

import (
	"context"
	"errors"
	"strings"
	"time"
)

// retainEvery is how often the scheduler looks for messages whose
// retention ran out (or every Config.Retention, when shorter).
const retainEvery = time.Hour

// retain deletes, now and then every retainEvery until ctx ends, the
// messages of dead and of the quarantine queues older there than
// Config.Retention.
func (s *Scheduler) retain(ctx context.Context) {
	defer s.wg.Done()
	every := min(retainEvery, s.cfg.Retention)
	for {
		s.purge(ctx)
		tc := s.cfg.Clock.After(every)
		if s.afterPurge != nil {
			s.afterPurge()
		}
		select {
		case <-ctx.Done():
			return
		case <-tc:
		}
	}
}

// purge deletes the messages of dead and of the quarantine queues whose
// retention ran out.
func (s *Scheduler) purge(ctx context.Context) {
	if s.cfg.Retention < 0 {
		return
	}
	qs, err := s.st.Queues()
	if err != nil {
		s.log.Error("queue: retention: cannot list the queues", "error", err)
		return
	}
	for _, q := range qs {
		if q != Dead && !strings.HasPrefix(q, QuarantinePrefix) {
			continue
		}
		ids, err := s.st.IDs(q)
		if err != nil {
			s.log.Error("queue: retention: cannot list a queue", "queue", q, "error", err)
			continue
		}
		for _, id := range ids {
			if ctx.Err() != nil {
				return
			}
			s.purgeOne(ctx, q, id)
		}
	}
}

// purgeOne deletes message id of queue q if its retention ran out.
func (s *Scheduler) purgeOne(ctx context.Context, q, id string) {
	unlock, err := s.st.Lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	lq, env, m, err := s.st.Load(id)
	switch {
	case errors.Is(err, ErrNotFound):
		return // deleted meanwhile
	case err != nil:
		s.log.Warn("queue: retention: cannot read entry; kept", "id", id, "queue", q, "error", err)
		return
	}
	defer m.Close()
	if lq != q {
		return // moved meanwhile
	}
	age := s.cfg.Clock.Now().Sub(since(env))
	if age < s.cfg.Retention {
		return
	}
	if err := s.st.Remove(ctx, q, env.ID); err != nil {
		s.log.Error("queue: retention: cannot delete entry", "id", id, "queue", q, "error", err)
		return
	}
	s.log.Info("queue: purged: retention ran out", "id", id, "queue", q, "age", age.Round(time.Second).String())
}

// since returns when env came into its queue: Envelope.Moved, or for an
// entry still where it was stored (or stored before Moved existed) the
// later of its arrival and its last attempt.
func since(env *Envelope) time.Time {
	if !env.Moved.IsZero() {
		return env.Moved
	}
	t := env.Received
	if env.LastAttempt.After(t) {
		t = env.LastAttempt
	}
	return t
}
