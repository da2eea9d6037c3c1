package qcow2

import (
	"container/list"
	"sync"
)

// l2Table is a decoded L2 table. Its entries are only modified while the
// image's write lock is held; readers hold the read lock.
type l2Table struct {
	off     uint64
	entries []uint64
	elem    *list.Element
}

// l2Cache is a small LRU of decoded L2 tables keyed by host offset. Its
// own mutex only protects the map and list, since concurrent readers
// (holding the image's read lock) share it.
type l2Cache struct {
	mu  sync.Mutex
	max int
	m   map[uint64]*l2Table
	lru list.List // front = most recently used
}

func newL2Cache(maxTables int) *l2Cache {
	return &l2Cache{max: max(maxTables, 4), m: map[uint64]*l2Table{}}
}

func (c *l2Cache) get(off uint64) *l2Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.m[off]
	if t != nil {
		c.lru.MoveToFront(t.elem)
	}
	return t
}

func (c *l2Cache) put(t *l2Table) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[t.off]; old != nil {
		c.lru.Remove(old.elem)
	}
	t.elem = c.lru.PushFront(t)
	c.m[t.off] = t
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.m, last.Value.(*l2Table).off)
	}
}
