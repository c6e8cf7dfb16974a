package dnscache

import (
	"container/list"
	"sync"
	"time"
)

// cache holds outcomes by name and type until they expire, at most max of
// them: when full, the least recently used one goes.
type cache struct {
	mu  sync.Mutex
	max int
	m   map[key]*list.Element // of *entry
	lru list.List             // front: most recently used
}

type entry struct {
	k       key
	out     outcome
	expires time.Time
}

func newCache(max int) *cache {
	return &cache{max: max, m: make(map[key]*list.Element)}
}

// get returns the outcome cached for k if it has not expired at now. An
// expired one is dropped: answers are never served stale.
func (c *cache) get(k key, now time.Time) (outcome, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return outcome{}, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.m, k)
		return outcome{}, false
	}
	c.lru.MoveToFront(el)
	return e.out, true
}

// put caches o for k until expires, replacing what was there.
func (c *cache) put(k key, o outcome, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		e := el.Value.(*entry)
		e.out, e.expires = o, expires
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.max {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.m, oldest.Value.(*entry).k)
	}
	c.m[k] = c.lru.PushFront(&entry{k: k, out: o, expires: expires})
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func (c *cache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
	c.lru.Init()
}

// flights collapses concurrent lookups of the same name and type into one
// resolution (the job of golang.org/x/sync/singleflight, plus a look at
// the cache under the same lock so that a resolution finishing just
// before is not repeated).
type flights struct {
	mu sync.Mutex
	m  map[key]*flight
}

type flight struct {
	done chan struct{} // closed when out is set
	out  outcome
}

// join returns the resolution of k in flight, starting it with resolve in
// a goroutine of its own if there is none; or, when the cache got k in the
// meantime, a nil flight and the cached outcome. A resolution stores a
// cacheable outcome in c before it leaves the flights.
func (fs *flights) join(k key, c *cache, now func() time.Time, resolve func() outcome) (*flight, outcome) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f, ok := fs.m[k]; ok {
		return f, outcome{}
	}
	if o, ok := c.get(k, now()); ok {
		return nil, o
	}
	if fs.m == nil {
		fs.m = make(map[key]*flight)
	}
	f := &flight{done: make(chan struct{})}
	fs.m[k] = f
	go func() {
		f.out = resolve()
		if f.out.ttl > 0 {
			c.put(k, f.out, now().Add(f.out.ttl))
		}
		fs.mu.Lock()
		delete(fs.m, k)
		fs.mu.Unlock()
		close(f.done)
	}()
	return f, outcome{}
}
