package relay

import "container/list"

// lru is a map bounded to max entries that forgets the least recently used
// one when full, so that state kept per client (rate limits, greylisting)
// stays bounded whatever clients send. It is not safe for concurrent use:
// its owner locks.
type lru[K comparable, V any] struct {
	max int
	ll  *list.List // front: most recently used; values are *lruEntry
	m   map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

// newLRU returns an empty lru holding at most size entries (at least 1).
func newLRU[K comparable, V any](size int) *lru[K, V] {
	return &lru[K, V]{max: max(size, 1), ll: list.New(), m: make(map[K]*list.Element)}
}

// get returns the value of k and marks it used.
func (c *lru[K, V]) get(k K) (V, bool) {
	if e, ok := c.m[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruEntry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// add sets the value of k, marks it used, and forgets the least recently
// used entry when there are more than max.
func (c *lru[K, V]) add(k K, v V) {
	if e, ok := c.m[k]; ok {
		e.Value.(*lruEntry[K, V]).val = v
		c.ll.MoveToFront(e)
		return
	}
	c.m[k] = c.ll.PushFront(&lruEntry[K, V]{k, v})
	for c.ll.Len() > c.max {
		oldest := c.ll.Back()
		c.ll.Remove(oldest)
		delete(c.m, oldest.Value.(*lruEntry[K, V]).key)
	}
}

// remove forgets k.
func (c *lru[K, V]) remove(k K) {
	if e, ok := c.m[k]; ok {
		c.ll.Remove(e)
		delete(c.m, k)
	}
}

// len returns the number of entries.
func (c *lru[K, V]) len() int { return c.ll.Len() }

// each calls fn for every entry, most recently used first.
func (c *lru[K, V]) each(fn func(K, V)) {
	for e := c.ll.Front(); e != nil; e = e.Next() {
		en := e.Value.(*lruEntry[K, V])
		fn(en.key, en.val)
	}
}
