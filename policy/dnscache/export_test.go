package dnscache

import "time"

// SetClock replaces time.Now for r's cache expiry, for tests; set it before
// r's first lookup. Query timeouts always use the real clock.
func SetClock(r *Resolver, now func() time.Time) { r.now = now }
