package tokenizer

import (
	"math"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpeModel is the BPE model of the Rust library (models::bpe::BPE) without
// dropout.
type bpeModel struct {
	vocab  map[string]int    // token -> id, the model's own vocabulary
	merges map[uint64]uint64 // (left<<32 | right) -> (rank<<32 | merged id)

	unkID        int // -1 without unk_token
	fuseUnk      bool
	byteFallback bool
	byteTokIDs   [256]int // ids of "<0xXX>" tokens, -1 if absent
	prefix       string   // continuing_subword_prefix
	suffix       string   // end_of_word_suffix
	ignoreMerges bool

	// byteMode: words arrive as raw bytes because the ByteLevel
	// pre-tokenizer's byte-to-rune mapping was deferred to the model.
	byteMode bool
	// byteIDs holds the id of each byte's rune when every byte has one and
	// there is no prefix/suffix; then raw bytes are looked up directly.
	byteIDs     [256]int32
	byteIDsFull bool

	// splitBefore, if set, is a separator (SentencePiece's "▁") such that no
	// vocabulary token contains another character followed by it. Merges can
	// then never cross the start of a separator run, so long words are
	// tokenized piecewise, which is exact and lets the cache work.
	splitBefore string

	cache *wordCache
}

const metaspaceRune = "\u2581"

// setupSplitBefore enables splitBefore when it is provably exact.
func (m *bpeModel) setupSplitBefore() {
	if m.prefix != "" || m.suffix != "" || m.ignoreMerges || m.byteMode {
		return
	}
	if _, ok := m.vocab[metaspaceRune]; !ok {
		return
	}
	for tok := range m.vocab {
		if i := strings.Index(tok, metaspaceRune); i >= 0 {
			for i >= 0 {
				if i > 0 && !strings.HasSuffix(tok[:i], metaspaceRune) {
					return
				}
				j := strings.Index(tok[i+len(metaspaceRune):], metaspaceRune)
				if j < 0 {
					break
				}
				i += len(metaspaceRune) + j
			}
		}
	}
	m.splitBefore = metaspaceRune
}

const noMerge = math.MaxUint64

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func (m *bpeModel) pairInfo(a, b int32) uint64 {
	if v, ok := m.merges[pairKey(a, b)]; ok {
		return v
	}
	return noMerge
}

// tokenize appends the ids of one pre-token word.
func (m *bpeModel) tokenize(dst []int, word string) []int {
	if word == "" {
		return dst
	}
	if sep := m.splitBefore; sep != "" && len(word) > len(sep) {
		// Cut before every separator that follows another character.
		start := 0
		for i := len(sep); i < len(word); {
			k := strings.Index(word[i:], sep)
			if k < 0 {
				break
			}
			i += k
			if !strings.HasSuffix(word[:i], sep) {
				dst = m.tokenizeCached(dst, word[start:i])
				start = i
			}
			i += len(sep)
		}
		word = word[start:]
	}
	return m.tokenizeCached(dst, word)
}

func (m *bpeModel) tokenizeCached(dst []int, word string) []int {
	if len(word) == 1 && m.byteMode && m.byteIDsFull {
		return append(dst, int(m.byteIDs[word[0]])) // single bytes never merge
	}
	if ids, ok := m.cache.get(word); ok {
		return append(dst, ids...)
	}
	ids := m.tokenizeWord(word)
	m.cache.put(word, ids)
	return append(dst, ids...)
}

func (m *bpeModel) tokenizeWord(word string) []int {
	s := word // the word in vocabulary space
	direct := m.byteMode && m.byteIDsFull
	if m.byteMode && (!direct || m.ignoreMerges) {
		s = byteLevelEncode(word)
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[s]; ok {
			return []int{id}
		}
	}
	var buf [64]int32
	var syms []int32
	if direct {
		syms = buf[:0]
		for i := 0; i < len(word); i++ {
			syms = append(syms, m.byteIDs[word[i]])
		}
	} else {
		syms = m.initialSymbols(buf[:0], s)
	}
	syms = m.mergeAll(syms)
	out := make([]int, len(syms))
	for i, id := range syms {
		out[i] = int(id)
	}
	return out
}

// initialSymbols splits a word into per-character ids, applying the
// continuing-subword prefix, end-of-word suffix, byte fallback and unknown
// token rules of BPE::merge_word.
func (m *bpeModel) initialSymbols(dst []int32, w string) []int32 {
	pendingUnk := false
	for i := 0; i < len(w); {
		_, size := utf8.DecodeRuneInString(w[i:])
		end := i + size
		sym := w[i:end]
		i = end
		if m.prefix != "" && end-size > 0 {
			sym = m.prefix + sym
		}
		if m.suffix != "" && end == len(w) {
			sym += m.suffix
		}
		if id, ok := m.vocab[sym]; ok {
			if pendingUnk {
				dst = append(dst, int32(m.unkID))
				pendingUnk = false
			}
			dst = append(dst, int32(id))
			continue
		}
		if m.byteFallback {
			ok := true
			for k := 0; k < len(sym); k++ {
				if m.byteTokIDs[sym[k]] < 0 {
					ok = false
					break
				}
			}
			if ok {
				// Like the Rust code, a pending unknown token is not flushed here.
				for k := 0; k < len(sym); k++ {
					dst = append(dst, int32(m.byteTokIDs[sym[k]]))
				}
				continue
			}
		}
		if m.unkID >= 0 {
			if pendingUnk && !m.fuseUnk {
				dst = append(dst, int32(m.unkID))
			}
			pendingUnk = true
		}
	}
	if pendingUnk {
		dst = append(dst, int32(m.unkID))
	}
	return dst
}

// mergeAll applies merges in rank order, leftmost first among equal ranks,
// which is what the Rust priority-queue implementation does.
func (m *bpeModel) mergeAll(syms []int32) []int32 {
	switch {
	case len(syms) < 2:
		return syms
	case len(syms) <= 64:
		return m.mergeSmall(syms)
	default:
		return m.mergeHeap(syms)
	}
}

// mergeSmall is the quadratic scan used for short words (fast in practice).
func (m *bpeModel) mergeSmall(syms []int32) []int32 {
	var buf [64]uint64
	pr := buf[:len(syms)-1]
	for i := range pr {
		pr[i] = m.pairInfo(syms[i], syms[i+1])
	}
	for {
		best, bi := uint64(noMerge), -1
		for i, v := range pr {
			if v < best {
				best, bi = v, i
			}
		}
		if bi < 0 {
			return syms
		}
		syms[bi] = int32(uint32(best))
		syms = append(syms[:bi+1], syms[bi+2:]...)
		pr = append(pr[:bi], pr[bi+1:]...)
		if bi > 0 {
			pr[bi-1] = m.pairInfo(syms[bi-1], syms[bi])
		}
		if bi < len(pr) {
			pr[bi] = m.pairInfo(syms[bi], syms[bi+1])
		}
	}
}

type mergeCand struct {
	rank  uint32
	pos   int32
	newID int32
}

func (a mergeCand) less(b mergeCand) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

// candHeap is a binary min-heap of merge candidates.
type candHeap []mergeCand

func (h *candHeap) push(c mergeCand) {
	*h = append(*h, c)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q[i].less(q[p]) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *candHeap) pop() mergeCand {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, r, s := 2*i+1, 2*i+2, i
		if l < n && q[l].less(q[s]) {
			s = l
		}
		if r < n && q[r].less(q[s]) {
			s = r
		}
		if s == i {
			break
		}
		q[i], q[s] = q[s], q[i]
		i = s
	}
	*h = q
	return top
}

// mergeHeap is the O(n log n) linked-list merge for long words.
func (m *bpeModel) mergeHeap(syms []int32) []int32 {
	n := len(syms)
	prev := make([]int32, n)
	next := make([]int32, n)
	alive := make([]bool, n)
	h := make(candHeap, 0, n)
	for i := range syms {
		prev[i], next[i], alive[i] = int32(i-1), int32(i+1), true
	}
	next[n-1] = -1
	add := func(i, j int32) {
		if v := m.pairInfo(syms[i], syms[j]); v != noMerge {
			h.push(mergeCand{uint32(v >> 32), i, int32(uint32(v))})
		}
	}
	for i := 0; i+1 < n; i++ {
		add(int32(i), int32(i+1))
	}
	for len(h) > 0 {
		c := h.pop()
		if !alive[c.pos] {
			continue
		}
		nx := next[c.pos]
		if nx < 0 {
			continue
		}
		if v := m.pairInfo(syms[c.pos], syms[nx]); v == noMerge || int32(uint32(v)) != c.newID {
			continue // stale candidate
		}
		syms[c.pos] = c.newID
		alive[nx] = false
		next[c.pos] = next[nx]
		if next[nx] >= 0 {
			prev[next[nx]] = c.pos
		}
		if p := prev[c.pos]; p >= 0 {
			add(p, c.pos)
		}
		if nn := next[c.pos]; nn >= 0 {
			add(c.pos, nn)
		}
	}
	out := syms[:0]
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, syms[i])
	}
	return out
}

// wordCache is a bounded, sharded, concurrency-safe cache from pre-token
// words to their ids. A full shard is simply emptied.
type wordCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

const (
	cacheShards     = 64
	cacheCapacity   = 64 * 1024
	cacheMaxWordLen = 256
)

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int
	_  [64 - 8 - 24]byte // keep shards on separate cache lines
}

func newWordCache(capacity int) *wordCache {
	c := &wordCache{perShard: max(1, capacity/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[string][]int)
	}
	return c
}

// shard picks a shard from a few bytes of w (cheaper than a full hash; the
// map hashes the whole word anyway).
func (c *wordCache) shard(w string) *cacheShard {
	h := uint(len(w)) * 0x9E3779B1
	if len(w) > 0 {
		h ^= uint(w[0]) * 31
		h ^= uint(w[len(w)-1]) * 131
		h ^= uint(w[len(w)/2]) * 521
	}
	return &c.shards[(h^h>>7)%cacheShards]
}

func (c *wordCache) get(w string) ([]int, bool) {
	if c == nil || len(w) > cacheMaxWordLen {
		return nil, false
	}
	s := c.shard(w)
	s.mu.RLock()
	ids, ok := s.m[w]
	s.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int) {
	if c == nil || len(w) > cacheMaxWordLen {
		return
	}
	s := c.shard(w)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		s.m = make(map[string][]int, c.perShard)
	}
	s.m[string([]byte(w))] = ids // copy: w may point into a large input
	s.mu.Unlock()
}
