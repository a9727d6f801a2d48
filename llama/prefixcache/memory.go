package prefixcache

import (
	"container/list"
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Memory is an in-memory LRU of values with reference counts and a byte budget.
//
//   - Entries in use (with at least one unreleased reference) are never evicted.
//   - When the total size of the entries exceeds the budget, the least-recently-used unreferenced
//     entries are evicted until it fits (or no unreferenced entry is left). onEvict is called once for
//     each evicted value, outside the lock (so it may free device memory, or even call Memory).
//   - An entry bigger than the whole budget can be inserted and used; it is evicted as soon as its last
//     reference is released.
//   - A budget <= 0 means no limit: entries are only evicted by Purge.
//
// "Recently used" means acquired (Acquire, Insert, GetOrCompute). Memory is safe for concurrent use.
type Memory[V any] struct {
	budget  int64
	onEvict func(Key, V)

	mu      sync.Mutex
	items   map[Key]*memEntry[V]
	lru     list.List // of *memEntry[V]; front = most recently used
	bytes   int64
	flights map[Key]*flight[V]
}

type memEntry[V any] struct {
	key   Key
	val   V
	bytes int64
	refs  int
	elem  *list.Element
}

// flight is one running computation of GetOrCompute.
type flight[V any] struct {
	done    chan struct{} // closed when e/err are set
	waiters int           // callers waiting for the result; guarded by Memory.mu
	settled bool          // the result is known (refs were handed out); guarded by Memory.mu
	cancel  context.CancelFunc

	e   *memEntry[V] // on success, with one reference added for each waiter counted when settled
	err error
}

// NewMemory returns an empty Memory holding up to budgetBytes of unreferenced values (<= 0: no limit).
// onEvict (may be nil) is called for each value that leaves the cache.
func NewMemory[V any](budgetBytes int64, onEvict func(Key, V)) *Memory[V] {
	return &Memory[V]{
		budget:  budgetBytes,
		onEvict: onEvict,
		items:   make(map[Key]*memEntry[V]),
		flights: make(map[Key]*flight[V]),
	}
}

// Acquire returns the value of k with a reference held, and marks it most recently used. The caller
// must call release (idempotent) once done with the value. ok is false when k is absent.
func (m *Memory[V]) Acquire(k Key) (v V, release func(), ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.items[k]
	if e == nil {
		return v, func() {}, false
	}
	m.refLocked(e)
	return e.val, m.releaser(e), true
}

// Insert adds v (of the given size in bytes) under k with one reference held by the caller, and returns
// it as stored with inserted == true. If k is already present, the existing value is returned instead
// (acquired, as by Acquire) with inserted == false, and v is left alone: onEvict is not called for it,
// the caller drops its own copy. Inserting may evict other, unreferenced entries.
func (m *Memory[V]) Insert(k Key, v V, bytes int64) (stored V, release func(), inserted bool) {
	m.mu.Lock()
	if e := m.items[k]; e != nil {
		m.refLocked(e)
		m.mu.Unlock()
		return e.val, m.releaser(e), false
	}
	e := m.addLocked(k, v, bytes, 1)
	victims := m.evictLocked()
	m.mu.Unlock()
	m.dropAll(victims)
	return e.val, m.releaser(e), true
}

// Len returns the number of entries (referenced or not).
func (m *Memory[V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

// Bytes returns the total size of the entries (referenced or not).
func (m *Memory[V]) Bytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes
}

// Purge evicts all unreferenced entries (calling onEvict for each). Referenced entries stay.
func (m *Memory[V]) Purge() {
	m.mu.Lock()
	victims := m.evictWhileLocked(func() bool { return true })
	m.mu.Unlock()
	m.dropAll(victims)
}

// MakeRoom evicts least-recently-used unreferenced entries until an entry of the given size would fit
// the budget beside the others (or no unreferenced entry is left): what inserting it would evict, done
// before it is computed, so that the old values' memory is free while the new one is made (a prefix's
// KV cache on the device: two of a LLaMA-2-7B 130,000-token context do not fit an H200).
func (m *Memory[V]) MakeRoom(bytes int64) {
	m.mu.Lock()
	var victims []*memEntry[V]
	if m.budget > 0 {
		victims = m.evictWhileLocked(func() bool { return m.bytes+bytes > m.budget })
	}
	m.mu.Unlock()
	m.dropAll(victims)
}

// GetOrCompute returns the value of k with a reference held (call release once done), computing it with
// compute if absent. compute returns the value and its size in bytes.
//
// Concurrent callers for the same absent key share one computation (single flight). The computation
// runs in its own goroutine with a context that carries the values of the first caller's ctx, and is
// cancelled only when every caller waiting for it has given up; a caller whose ctx is done stops
// waiting and gets ctx.Err() while the others keep waiting.
//
// hit is false only for the caller that started the computation (and got its result); callers that
// found the value cached, or joined a computation started by another caller, get hit == true.
//
// Errors (and panics, turned into errors) of compute are returned to every waiting caller and not
// cached: the next call computes again. If k was inserted by another path (Insert) while compute was
// running, the inserted value wins and onEvict is called for the computed one.
func (m *Memory[V]) GetOrCompute(ctx context.Context, k Key, compute func(ctx context.Context) (V, int64, error)) (v V, release func(), hit bool, err error) {
	m.mu.Lock()
	if e := m.items[k]; e != nil {
		m.refLocked(e)
		m.mu.Unlock()
		return e.val, m.releaser(e), true, nil
	}
	c := m.flights[k]
	leader := c == nil
	if leader {
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &flight[V]{done: make(chan struct{}), cancel: cancel}
		m.flights[k] = c
		go m.runFlight(cctx, k, c, compute)
	}
	c.waiters++
	m.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		m.mu.Lock()
		if !c.settled {
			c.waiters--
			if c.waiters == 0 {
				// Nobody wants the result anymore: cancel the computation, and let the next caller
				// start a fresh one rather than join a cancelled one.
				c.cancel()
				if m.flights[k] == c {
					delete(m.flights, k)
				}
			}
			m.mu.Unlock()
			return v, func() {}, false, ctx.Err()
		}
		// The result is already there, with a reference counted for us: take it.
		m.mu.Unlock()
		<-c.done
	}
	if c.err != nil {
		return v, func() {}, false, c.err
	}
	return c.e.val, m.releaser(c.e), !leader, nil
}

func (m *Memory[V]) runFlight(ctx context.Context, k Key, c *flight[V], compute func(ctx context.Context) (V, int64, error)) {
	defer c.cancel()
	v, n, err := safeCompute(ctx, compute)

	var victims []*memEntry[V]
	discard := false
	m.mu.Lock()
	c.settled = true
	if m.flights[k] == c {
		delete(m.flights, k)
	}
	if err == nil {
		e := m.items[k]
		if e == nil {
			e = m.addLocked(k, v, n, 0)
		} else {
			discard = true // inserted meanwhile by another path: keep that one
		}
		if c.waiters > 0 {
			e.refs += c.waiters
			m.lru.MoveToFront(e.elem)
		}
		c.e = e
		victims = m.evictLocked()
	} else {
		c.err = err
	}
	m.mu.Unlock()
	close(c.done)

	if discard && m.onEvict != nil {
		m.onEvict(k, v)
	}
	m.dropAll(victims)
}

func safeCompute[V any](ctx context.Context, compute func(ctx context.Context) (V, int64, error)) (v V, n int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("prefixcache: compute panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return compute(ctx)
}

// addLocked adds a new entry with refs references, most recently used.
func (m *Memory[V]) addLocked(k Key, v V, bytes int64, refs int) *memEntry[V] {
	if bytes < 0 {
		bytes = 0
	}
	e := &memEntry[V]{key: k, val: v, bytes: bytes, refs: refs}
	e.elem = m.lru.PushFront(e)
	m.items[k] = e
	m.bytes += bytes
	return e
}

func (m *Memory[V]) removeLocked(e *memEntry[V]) {
	m.lru.Remove(e.elem)
	delete(m.items, e.key)
	m.bytes -= e.bytes
}

func (m *Memory[V]) refLocked(e *memEntry[V]) {
	e.refs++
	m.lru.MoveToFront(e.elem)
}

// evictLocked removes least-recently-used unreferenced entries while over budget and returns them
// (for dropAll, outside the lock).
func (m *Memory[V]) evictLocked() []*memEntry[V] {
	if m.budget <= 0 {
		return nil
	}
	return m.evictWhileLocked(func() bool { return m.bytes > m.budget })
}

// evictWhileLocked removes unreferenced entries, least recently used first, while more is true, and
// returns them (for dropAll, outside the lock).
func (m *Memory[V]) evictWhileLocked(more func() bool) []*memEntry[V] {
	var victims []*memEntry[V]
	for el := m.lru.Back(); el != nil && more(); {
		prev := el.Prev()
		if e := el.Value.(*memEntry[V]); e.refs == 0 {
			m.removeLocked(e)
			victims = append(victims, e)
		}
		el = prev
	}
	return victims
}

func (m *Memory[V]) dropAll(victims []*memEntry[V]) {
	if m.onEvict == nil {
		return
	}
	for _, e := range victims {
		m.onEvict(e.key, e.val)
	}
}

// releaser returns an idempotent function dropping one reference to e.
func (m *Memory[V]) releaser(e *memEntry[V]) func() {
	var done atomic.Bool
	return func() {
		if !done.CompareAndSwap(false, true) {
			return
		}
		m.mu.Lock()
		e.refs--
		if e.refs < 0 {
			m.mu.Unlock()
			panic("prefixcache: negative reference count")
		}
		var victims []*memEntry[V]
		if e.refs == 0 {
			victims = m.evictLocked()
		}
		m.mu.Unlock()
		m.dropAll(victims)
	}
}
