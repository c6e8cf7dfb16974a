// Package idlock serialises work on one ID (a queue ID) within a process:
// the queue's spool and its JetStream store both lock a message this way
// between scheduler workers and the admin operations.
package idlock

import (
	"context"
	"sync"
)

// Locks holds one lock per ID, made on first use and dropped on unlock.
// The zero value is ready to use.
type Locks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// Lock gives the caller id until it calls the returned unlock; it waits
// while another holds id, up to ctx.
func (l *Locks) Lock(ctx context.Context, id string) (unlock func(), err error) {
	for {
		l.mu.Lock()
		if l.m == nil {
			l.m = map[string]chan struct{}{}
		}
		ch, busy := l.m[id]
		if !busy {
			ch = make(chan struct{})
			l.m[id] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.m, id)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
