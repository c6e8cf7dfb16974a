package queue

import (
	"time"

	"github.com/mtakit/mtakit/policy"
)

// Events receives what happens in the queue, for metrics (*metrics.Metrics
// of mtakit/policy/metrics is one). Set it as Config.Events, for the
// scheduler's events, and as SpoolConfig.Events, for the spool's; nil
// reports nothing and costs nothing.
//
// The methods are called synchronously by the workers of the scheduler and
// by whoever commits to the spool, concurrently: they must be safe for
// concurrent use, fast, and never block (count, do not log or write).
type Events interface {
	// DeliveryAttempted is called for each recipient a transport was asked
	// to deliver to, with the reply it got for it (2xx delivered, 4xx
	// deferred, 5xx failed) and the time since the message arrived in the
	// queue. transport is the route's Transport name.
	DeliveryAttempted(transport string, reply policy.Reply, sinceArrival time.Duration)
	// DSNQueued is called for each delivery status notification the
	// scheduler queued, with its Action: "failed", "delayed" or
	// "delivered".
	DSNQueued(action string)
	// SpoolCommitted is called by a Spool after each commit round, one
	// sync that made ops changes durable together (group commit):
	// enqueues, and the envelope records and moves of the scheduler and
	// the admin API. Not called with SpoolConfig.UnsafeNoSync.
	SpoolCommitted(ops int)
}

// attempted reports the replies of one transport call to Config.Events.
func (s *Scheduler) attempted(transport string, replies []policy.Reply, received time.Time) {
	e := s.cfg.Events
	if e == nil {
		return
	}
	since := s.cfg.Clock.Now().Sub(received)
	for _, r := range replies {
		e.DeliveryAttempted(transport, r, since)
	}
}
