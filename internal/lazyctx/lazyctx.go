package lazyctx

import (
	"context"
	"sync"
	"time"
)

// WithTimeout is WithDeadline(parent, time.Now().Add(d)).
func WithTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return WithDeadline(parent, time.Now().Add(d))
}

// WithDeadline returns a copy of parent that is done at d, when parent is
// done, or when the returned cancel is called, whichever comes first, as
// context.WithDeadline's is. Call cancel when the work is over: it
// releases the timer if one was started.
func WithDeadline(parent context.Context, d time.Time) (context.Context, context.CancelFunc) {
	if cur, ok := parent.Deadline(); ok && cur.Before(d) {
		d = cur
	}
	c := &deadlineCtx{parent: parent, deadline: d}
	return c, c.cancel
}

// deadlineCtx is a context with a deadline and no timer until armed: then
// every method but Deadline defers to armed, a context.WithDeadline of
// parent.
type deadlineCtx struct {
	parent   context.Context
	deadline time.Time

	mu       sync.Mutex
	armed    context.Context
	disarm   context.CancelFunc
	canceled bool // cancel was called before arming
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// arm returns the real context, making it on first use; c.mu is held.
func (c *deadlineCtx) arm() context.Context {
	if c.armed == nil {
		if c.canceled {
			c.armed, c.disarm = context.WithCancel(c.parent)
			c.disarm()
		} else {
			c.armed, c.disarm = context.WithDeadline(c.parent, c.deadline)
		}
	}
	return c.armed
}

func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.arm().Done()
}

// Value arms c: context.Cause and the children of c find their parent's
// state through Value, and must find c's own.
func (c *deadlineCtx) Value(key any) any {
	c.mu.Lock()
	armed := c.arm()
	c.mu.Unlock()
	return armed.Value(key)
}

// Err answers from the clock and the parent while nothing waits on c, and
// arms c as soon as it is over, so that Done, Err and context.Cause agree
// from then on (the armed context's Err never changes once set).
func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed == nil && !c.canceled && c.parent.Err() == nil && time.Now().Before(c.deadline) {
		return nil
	}
	return c.arm().Err()
}

func (c *deadlineCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed != nil {
		c.disarm()
		return
	}
	c.canceled = true
}

func (c *deadlineCtx) String() string { return "lazyctx.WithDeadline(" + c.deadline.String() + ")" }
