package prefixcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func key(s string) Key { return MakeKey("model", "f32", []int{len(s), int(s[0])}) }

type evictLog struct {
	mu   sync.Mutex
	keys []Key
	vals []string
}

func (l *evictLog) onEvict(k Key, v string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, k)
	l.vals = append(l.vals, v)
}

func (l *evictLog) values() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.vals)
}

func TestMakeKey(t *testing.T) {
	a := MakeKey("m", "f32", []int{1, 2, 3})
	if a != MakeKey("m", "f32", []int{1, 2, 3}) {
		t.Fatal("MakeKey is not deterministic")
	}
	for _, other := range []Key{
		MakeKey("m2", "f32", []int{1, 2, 3}),
		MakeKey("m", "bf16", []int{1, 2, 3}),
		MakeKey("m", "f32", []int{1, 2}),
		MakeKey("m", "f32", []int{1, 2, 3, 0}),
		MakeKey("mf", "32", []int{1, 2, 3}), // length prefixes: no ambiguity between fields
		MakeKey("m", "f32", nil),
	} {
		if other == a {
			t.Errorf("collision with %v", other)
		}
	}
	long := make([]int, 5000)
	for i := range long {
		long[i] = i
	}
	k1 := MakeKey("m", "f32", long)
	long[4999]++
	if MakeKey("m", "f32", long) == k1 {
		t.Error("last token of a long prefix not hashed")
	}
	if s := a.String(); len(s) != 64 || s != fmt.Sprintf("%x", a[:]) {
		t.Errorf("String() = %q", s)
	}
}

func TestMemoryLRUOrder(t *testing.T) {
	var log evictLog
	m := NewMemory[string](30, log.onEvict)
	for _, s := range []string{"a", "b", "c"} {
		_, rel, ok := m.Insert(key(s), s, 10)
		if !ok {
			t.Fatalf("Insert(%s) not inserted", s)
		}
		rel()
	}
	if m.Len() != 3 || m.Bytes() != 30 {
		t.Fatalf("Len=%d Bytes=%d, want 3, 30", m.Len(), m.Bytes())
	}
	// Use a: b becomes the least recently used.
	v, rel, ok := m.Acquire(key("a"))
	if !ok || v != "a" {
		t.Fatalf("Acquire(a) = %q, %v", v, ok)
	}
	rel()
	_, rel, _ = m.Insert(key("d"), "d", 10)
	rel()
	if got := log.values(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("evicted %v, want [b]", got)
	}
	// Order now (LRU first): c, a, d. Two more entries evict c then a.
	_, rel, _ = m.Insert(key("eeee"), "e", 20)
	rel()
	if got := log.values(); !slices.Equal(got, []string{"b", "c", "a"}) {
		t.Fatalf("evicted %v, want [b c a]", got)
	}
	if _, _, ok := m.Acquire(key("b")); ok {
		t.Error("b still present")
	}
	if m.Len() != 2 || m.Bytes() != 30 {
		t.Fatalf("Len=%d Bytes=%d, want 2, 30", m.Len(), m.Bytes())
	}
}

func TestMemoryEvictionSkipsReferenced(t *testing.T) {
	var log evictLog
	m := NewMemory[string](20, log.onEvict)
	_, relA, _ := m.Insert(key("a"), "a", 10) // held
	_, relB, _ := m.Insert(key("b"), "b", 10)
	relB()
	_, relC, _ := m.Insert(key("c"), "c", 10) // over budget: a is older but referenced, so b goes
	if got := log.values(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("evicted %v, want [b]", got)
	}
	// Everything referenced: going over budget evicts nothing.
	_, relD, _ := m.Insert(key("d"), "d", 10)
	if got := log.values(); len(got) != 1 || m.Bytes() != 30 {
		t.Fatalf("evicted %v, bytes %d; want nothing more evicted, 30 bytes", got, m.Bytes())
	}
	// Releasing makes them evictable, in LRU order, down to the budget.
	relA()
	if got := log.values(); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("evicted %v, want [b a]", got)
	}
	relC()
	relD()
	if m.Len() != 2 || m.Bytes() != 20 {
		t.Fatalf("Len=%d Bytes=%d", m.Len(), m.Bytes())
	}
	// An entry bigger than the budget lives while referenced, and goes when released.
	_, relBig, _ := m.Insert(key("big"), "big", 100)
	if _, rel, ok := m.Acquire(key("big")); !ok {
		t.Fatal("big entry not present while referenced")
	} else {
		rel()
	}
	if m.Len() != 1 {
		t.Fatalf("Len=%d, want 1 (c and d evicted for big)", m.Len())
	}
	relBig()
	if m.Len() != 0 || m.Bytes() != 0 {
		t.Fatalf("Len=%d Bytes=%d after releasing big entry", m.Len(), m.Bytes())
	}
	if got := log.values(); !slices.Equal(got, []string{"b", "a", "c", "d", "big"}) {
		t.Fatalf("evicted %v", got)
	}
}

func TestMemoryReleaseIdempotentAndEvictOnce(t *testing.T) {
	var log evictLog
	m := NewMemory[string](10, log.onEvict)
	_, rel1, _ := m.Insert(key("a"), "a", 10)
	_, rel2, ok := m.Acquire(key("a"))
	if !ok {
		t.Fatal("Acquire failed")
	}
	// Releasing the first reference many times must not drop the second one.
	for range 5 {
		rel1()
	}
	_, relB, _ := m.Insert(key("b"), "b", 10)
	if len(log.values()) != 0 {
		t.Fatalf("a evicted while still referenced: %v", log.values())
	}
	rel2()
	rel2()
	relB()
	relB()
	if got := log.values(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("evicted %v, want [a]", got)
	}
	m.Purge()
	m.Purge()
	if got := log.values(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("evicted %v, want [a b] (each once)", got)
	}
	if m.Len() != 0 || m.Bytes() != 0 {
		t.Fatalf("Len=%d Bytes=%d after Purge", m.Len(), m.Bytes())
	}
}

func TestMemoryInsertExisting(t *testing.T) {
	var log evictLog
	m := NewMemory[string](0, log.onEvict) // no limit
	_, rel1, inserted := m.Insert(key("a"), "first", 10)
	if !inserted {
		t.Fatal("first Insert not inserted")
	}
	stored, rel2, inserted := m.Insert(key("a"), "second", 10)
	if inserted || stored != "first" {
		t.Fatalf("second Insert = %q, inserted=%v; want existing value", stored, inserted)
	}
	if m.Len() != 1 || m.Bytes() != 10 {
		t.Fatalf("Len=%d Bytes=%d", m.Len(), m.Bytes())
	}
	rel1()
	rel2()
	if len(log.values()) != 0 {
		t.Fatalf("onEvict called: %v", log.values())
	}
	// Purge keeps referenced entries.
	_, rel, _ := m.Acquire(key("a"))
	m.Purge()
	if m.Len() != 1 {
		t.Fatal("Purge evicted a referenced entry")
	}
	rel()
	m.Purge()
	if got := log.values(); !slices.Equal(got, []string{"first"}) {
		t.Fatalf("evicted %v", got)
	}
}

func TestMemoryGetOrComputeSingleFlight(t *testing.T) {
	var log evictLog
	m := NewMemory[string](1000, log.onEvict)
	var calls atomic.Int32
	gate := make(chan struct{})
	compute := func(ctx context.Context) (string, int64, error) {
		calls.Add(1)
		<-gate
		return "value", 10, nil
	}
	const n = 20
	type result struct {
		v   string
		rel func()
		hit bool
		err error
	}
	results := make([]result, n)
	var started, wg sync.WaitGroup
	started.Add(n)
	for i := range n {
		wg.Go(func() {
			started.Done()
			v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), compute)
			results[i] = result{v, rel, hit, err}
		})
	}
	started.Wait()
	time.Sleep(20 * time.Millisecond) // let them all join the flight
	close(gate)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Fatalf("compute ran %d times, want 1", c)
	}
	misses := 0
	for i, r := range results {
		if r.err != nil || r.v != "value" {
			t.Fatalf("caller %d: %q, %v", i, r.v, r.err)
		}
		if !r.hit {
			misses++
		}
	}
	if misses != 1 {
		t.Fatalf("%d callers got hit=false, want exactly 1 (the one that started compute)", misses)
	}
	// Every caller holds a reference: nothing can be evicted until all release.
	m.Purge()
	if m.Len() != 1 {
		t.Fatal("entry evicted while referenced")
	}
	for _, r := range results {
		r.rel()
	}
	// A later call is a plain hit.
	v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), compute)
	if err != nil || v != "value" || !hit {
		t.Fatalf("later call: %q, hit=%v, %v", v, hit, err)
	}
	rel()
	if calls.Load() != 1 {
		t.Fatal("compute ran again")
	}
	m.Purge()
	if got := log.values(); !slices.Equal(got, []string{"value"}) {
		t.Fatalf("evicted %v, want one value", got)
	}
}

func TestMemoryGetOrComputeErrorNotCached(t *testing.T) {
	m := NewMemory[string](1000, nil)
	boom := errors.New("boom")
	var calls int
	_, _, _, err := m.GetOrCompute(t.Context(), key("k"), func(context.Context) (string, int64, error) {
		calls++
		return "", 0, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if m.Len() != 0 {
		t.Fatal("error cached")
	}
	// A panic is an error too (and does not hang anyone).
	_, _, _, err = m.GetOrCompute(t.Context(), key("k"), func(context.Context) (string, int64, error) {
		calls++
		panic("kaboom")
	})
	if err == nil || m.Len() != 0 {
		t.Fatalf("panic: err = %v, Len = %d", err, m.Len())
	}
	v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), func(context.Context) (string, int64, error) {
		calls++
		return "ok", 1, nil
	})
	if err != nil || v != "ok" || hit {
		t.Fatalf("retry: %q hit=%v err=%v", v, hit, err)
	}
	rel()
	if calls != 3 {
		t.Fatalf("compute ran %d times, want 3", calls)
	}
}

func TestMemoryGetOrComputeCancelWaiter(t *testing.T) {
	m := NewMemory[string](1000, nil)
	gate := make(chan struct{})
	var calls atomic.Int32
	compute := func(ctx context.Context) (string, int64, error) {
		calls.Add(1)
		select {
		case <-gate:
			return "value", 10, nil
		case <-ctx.Done():
			return "", 0, ctx.Err()
		}
	}
	// The leader keeps waiting; a second caller gives up.
	type res struct {
		v   string
		rel func()
		hit bool
		err error
	}
	leader := make(chan res, 1)
	go func() {
		v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), compute)
		leader <- res{v, rel, hit, err}
	}()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(t.Context())
	waiter := make(chan res, 1)
	go func() {
		v, rel, hit, err := m.GetOrCompute(ctx, key("k"), compute)
		waiter <- res{v, rel, hit, err}
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case r := <-waiter:
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled waiter: err = %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled waiter still blocked")
	}
	close(gate)
	r := <-leader
	if r.err != nil || r.v != "value" || r.hit {
		t.Fatalf("leader: %q hit=%v err=%v", r.v, r.hit, r.err)
	}
	r.rel()
	if calls.Load() != 1 {
		t.Fatalf("compute ran %d times", calls.Load())
	}
	// No leaked reference from the cancelled waiter: the entry can be purged.
	m.Purge()
	if m.Len() != 0 {
		t.Fatal("entry still referenced")
	}
}

func TestMemoryGetOrComputeAllWaitersCancel(t *testing.T) {
	m := NewMemory[string](1000, nil)
	computeCancelled := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, _, _, err := m.GetOrCompute(ctx, key("k"), func(cctx context.Context) (string, int64, error) {
			<-cctx.Done() // only when every waiter gave up
			close(computeCancelled)
			return "", 0, cctx.Err()
		})
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	select {
	case <-computeCancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("compute not cancelled after every waiter gave up")
	}
	// A new caller starts a fresh computation rather than joining the cancelled one.
	v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), func(context.Context) (string, int64, error) {
		return "fresh", 1, nil
	})
	if err != nil || v != "fresh" || hit {
		t.Fatalf("fresh call: %q hit=%v err=%v", v, hit, err)
	}
	rel()
}

func TestMemoryGetOrComputeInsertedMeanwhile(t *testing.T) {
	var log evictLog
	m := NewMemory[string](1000, log.onEvict)
	gate := make(chan struct{})
	started := make(chan struct{})
	done := make(chan struct{})
	var got string
	var gotHit bool
	go func() {
		defer close(done)
		v, rel, hit, err := m.GetOrCompute(t.Context(), key("k"), func(context.Context) (string, int64, error) {
			close(started)
			<-gate
			return "computed", 10, nil
		})
		if err != nil {
			t.Error(err)
			return
		}
		got, gotHit = v, hit
		rel()
	}()
	<-started
	_, rel, inserted := m.Insert(key("k"), "inserted", 10)
	if !inserted {
		t.Fatal("Insert during compute not inserted")
	}
	rel()
	close(gate)
	<-done
	if got != "inserted" || gotHit {
		t.Fatalf("GetOrCompute = %q hit=%v, want the inserted value, hit=false", got, gotHit)
	}
	if ev := log.values(); !slices.Equal(ev, []string{"computed"}) {
		t.Fatalf("evicted %v, want [computed] (the discarded computation)", ev)
	}
	if m.Len() != 1 || m.Bytes() != 10 {
		t.Fatalf("Len=%d Bytes=%d", m.Len(), m.Bytes())
	}
}

// TestMemoryConcurrent hammers a small Memory from many goroutines (run with -race) and checks the
// invariants: every value evicted exactly once, never while referenced, and the byte accounting.
func TestMemoryConcurrent(t *testing.T) {
	type val struct {
		id      int64
		key     Key
		inUse   atomic.Int32
		evicted atomic.Int32
	}
	var nextID atomic.Int64
	var created, evicted atomic.Int64
	m := NewMemory[*val](50, func(k Key, v *val) {
		if v.key != k {
			t.Errorf("onEvict key mismatch")
		}
		if v.inUse.Load() != 0 {
			t.Errorf("value %d evicted while in use", v.id)
		}
		if v.evicted.Add(1) != 1 {
			t.Errorf("value %d evicted twice", v.id)
		}
		evicted.Add(1)
	})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 300 {
				k := key(fmt.Sprintf("k%d", (g*7+i)%13))
				var v *val
				var rel func()
				var err error
				switch i % 3 {
				case 0:
					var ok bool
					v, rel, ok = m.Acquire(k)
					if !ok {
						continue
					}
				case 1:
					nv := &val{id: nextID.Add(1), key: k}
					var inserted bool
					v, rel, inserted = m.Insert(k, nv, 10)
					if inserted {
						created.Add(1)
					}
				default:
					v, rel, _, err = m.GetOrCompute(t.Context(), k, func(context.Context) (*val, int64, error) {
						created.Add(1)
						return &val{id: nextID.Add(1), key: k}, 10, nil
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
				v.inUse.Add(1)
				if v.evicted.Load() != 0 {
					t.Errorf("got an evicted value")
				}
				v.inUse.Add(-1)
				rel()
				rel()
			}
		})
	}
	wg.Wait()
	m.Purge()
	if m.Len() != 0 || m.Bytes() != 0 {
		t.Fatalf("after Purge: Len=%d Bytes=%d", m.Len(), m.Bytes())
	}
	if created.Load() != evicted.Load() {
		t.Fatalf("created %d values, evicted %d", created.Load(), evicted.Load())
	}
}

// TestMemoryMakeRoom: MakeRoom evicts the least recently used unreferenced entries until the new size fits
// beside the rest, never a referenced one, nothing when it fits already or without a budget.
func TestMemoryMakeRoom(t *testing.T) {
	var log evictLog
	m := NewMemory[string](30, log.onEvict)
	for _, s := range []string{"a", "b", "c"} {
		_, rel, _ := m.Insert(key(s), s, 10)
		rel()
	}
	_, relB, _ := m.Acquire(key("b")) // b referenced and most recent: LRU order a, c, b
	m.MakeRoom(0)
	if got := log.values(); len(got) != 0 {
		t.Fatalf("MakeRoom(0) at the budget evicted %v", got)
	}
	m.MakeRoom(15) // 30 + 15 > 30: a then c must go; b is referenced
	if got := log.values(); !slices.Equal(got, []string{"a", "c"}) || m.Bytes() != 10 {
		t.Fatalf("MakeRoom(15) evicted %v (bytes %d), want [a c] and 10 bytes left", got, m.Bytes())
	}
	m.MakeRoom(100) // only b is left, referenced
	if m.Len() != 1 {
		t.Fatalf("MakeRoom evicted a referenced entry: Len %d", m.Len())
	}
	relB()
	unlimited := NewMemory[string](0, log.onEvict)
	_, rel, _ := unlimited.Insert(key("x"), "x", 10)
	rel()
	unlimited.MakeRoom(1 << 40)
	if unlimited.Len() != 1 {
		t.Fatal("MakeRoom evicted from a cache without a budget")
	}
}
