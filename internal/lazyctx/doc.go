// Package lazyctx gives a context a deadline whose timer starts only when
// someone waits for it.
//
// context.WithTimeout costs an allocation, a runtime timer and a place
// among its parent's children, made and undone every time. mtakit bounds
// every rule and every SMTP command that way, about ten times per message,
// and most of those bounds are never waited on: a rule that reads the
// envelope and returns never calls Done. A lazyctx context reports its
// deadline at once (Deadline), answers Err from the clock and its parent,
// and makes the real context.WithDeadline only when Done or Value is
// called, or when its time is up. It is a context.Context like any other:
// Done closes at the deadline, when the parent is done, or on cancel, and
// Err, once non-nil, stays the same.
package lazyctx
