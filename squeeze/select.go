package squeeze

import (
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
)

// Selection at the cluster level.
//
// Every key of a cluster has its cluster's score, so choosing "the budget best keys" needs only the K
// cluster scores weighted by their counts — K is 20× smaller than the number of keys at 5% centroids.
// SelectKeys finds the budget-th largest score by a count-weighted search over the clusters (4 passes
// over [H, K], not 31 over [H, S]), and then writes the kept keys' index list directly, slot by slot,
// from the clusters' runs in a cluster-sorted order of the keys (ClusterOrder), without a pass over all
// keys (no per-key scores, mask, cumulative sum or scatter).
//
// When the fixed context's keys and values are stored sorted by cluster (PermuteRows with ClusterOrder's
// order; attention does not depend on key order once RoPE is applied), a kept cluster is one contiguous
// run of rows and the sparse read is a few long block copies; pass order = nil then.

// searchWays is the number of intervals the count-weighted threshold search splits its range into per
// pass. On an accelerator, where every pass is at least one kernel launch, 64 finds the exact float in 6
// passes over [H, K] (each compares every cluster with 63 candidate thresholds, fused into one
// reduction); on the pure-Go backend, where only the arithmetic counts, plain bisection (31 passes) is
// cheapest.
func searchWays(g *Graph) int {
	if testWays != 0 {
		return testWays
	}
	if g.Backend().String() == "go" {
		return 2
	}
	return 64
}

// testWays overrides searchWays in tests (0: off; allPairs: boundaryBits whatever K).
var testWays int

// allPairs as searchWays' result selects boundaryBits, the all-pairs comparison.
const allPairs = -1

// allPairsMaxK is the largest number of clusters whose boundary an accelerator finds by comparing all
// pairs of clusters (boundaryBits: one fused [H, K, K] reduction) instead of a sort (boundarySort; before
// session 9, budgetBits' passes: 6 passes of 3 dependent small kernels each with 64 ways). At K = 2048 that is 4M comparisons per head. Traced on
// an H100 (LLaMA-2-7B shape, 32K context, K = 1638): budgetBits took 5 passes of 2.7 + 1.3 + 1.2 µs of
// kernels a layer (scripts/gpu/trace_squeeze.sh).
const allPairsMaxK = 2048

// NoAllPairs makes accelerators search in passes (budgetBits) whatever K, for measuring what the
// all-pairs comparison gains; the engine sets it from SQLLM_SQUEEZE_PASSES.
var NoAllPairs bool

// Search is how the selection finds the budget's boundary score among a head's clusters (LayerIndex.Search).
// Every search finds the same boundary.
type Search int

const (
	// SearchAuto: on an accelerator the all-pairs comparison up to allPairsMaxK clusters and the sort above
	// (the passes with NoAllPairs), on the pure-Go backend bisection. Measured on an H200 (session 9,
	// attention benchmark, 10% budget, µs a layer for the boundary alone): K = 1638 (32K context)
	// all-pairs 21, sort 28, passes 124; K = 6554 (128K) sort 80, passes 183.
	SearchAuto     Search = iota
	SearchPasses          // budgetBits: passes of searchWays candidate thresholds (bisection on the pure-Go backend)
	SearchAllPairs        // boundaryBits: one [H, K, K] comparison
	SearchSort            // boundarySort: the clusters sorted by score, then a cumulative sum of their counts
)

// boundary is budgetBits' lo for SelectKeys with the given search (see Search); all give the same lo.
func boundary(bits, counts, budget *Node, search Search) *Node {
	ways := searchWays(bits.Graph())
	switch search {
	case SearchPasses:
		return budgetBits(bits, counts, budget, max(2, ways))
	case SearchAllPairs:
		return MaxScalar(boundaryBits(bits, counts, budget), 0)
	case SearchSort:
		return boundarySort(bits, counts, budget)
	}
	switch {
	case ways == allPairs || (ways > 2 && testWays == 0 && !NoAllPairs && bits.Shape().Dimensions[1] <= allPairsMaxK):
		return MaxScalar(boundaryBits(bits, counts, budget), 0)
	case ways > 2 && testWays == 0 && !NoAllPairs:
		return boundarySort(bits, counts, budget)
	}
	return budgetBits(bits, counts, budget, ways)
}

// Boundary is the float bits lo [H, 1] of the budget-th largest key score when each cluster's score
// (scores [H, K] ≥ 0) stands for all its keys (counts [H, K]), found with the given search: the first half
// of SelectKeys, for measuring it alone. budget is a scalar int32 node.
func Boundary(scores, counts, budget *Node, search Search) *Node {
	return boundary(ScoreBits(scores), ConvertDType(counts, dtypes.Int32), budget, search)
}

// boundarySort is boundaryBits through a sort: the clusters in decreasing order of score, the running sum
// of their counts; lo is the largest score whose running sum reaches the budget (0 when none does). Within a
// run of tied scores the last one's running sum counts them all, as boundaryBits' sum does.
func boundarySort(bits, counts, budget *Node) *Node {
	g := bits.Graph()
	h, k := bits.Shape().Dimensions[0], bits.Shape().Dimensions[1]
	neg := Neg(bits) // bits ≥ 0: ascending -bits is descending bits
	desc := NewClosure(g, func(g *Graph) []*Node {
		lhs := Parameter(g, "lhs_key", shapes.Make(dtypes.Int32))
		rhs := Parameter(g, "rhs_key", shapes.Make(dtypes.Int32))
		_ = Parameter(g, "lhs_count", shapes.Make(counts.DType()))
		_ = Parameter(g, "rhs_count", shapes.Make(counts.DType()))
		return []*Node{LessThan(lhs, rhs)}
	})
	sorted := SortFunc(desc, 1, false, neg, counts)
	cum := CumSum(sorted[1], 1) // [H, K]
	ok := GreaterOrEqual(cum, BroadcastToDims(ConvertDType(budget, counts.DType()), h, k))
	lo := ReduceAndKeep(Where(ok, Neg(sorted[0]), Scalar(g, dtypes.Int32, -1)), ReduceMax, 1)
	return MaxScalar(lo, 0)
}

// maxScoreBits bounds the bits of a non-negative float32 score (+Inf is 0x7f800000).
const maxScoreBits = 0x7f800001

// budgetBits returns, per head, the float bits lo [H, 1] of the budget-th largest key score when each
// cluster's score stands for all its keys: count(bits ≥ lo) ≥ budget > count(bits > lo), counts
// weighted. bits [H, K] int32 are the bits of non-negative float32 scores (monotonic in the score),
// counts [H, K] int32, budget a scalar int32. With budget ≥ the total count, lo = 0. Each pass splits the
// remaining range in `ways` intervals (2: bisection, 31 passes; 64: 6 passes; 256: 4 passes).
func budgetBits(bits, counts, budget *Node, ways int) *Node {
	g := bits.Graph()
	h, k := bits.Shape().Dimensions[0], bits.Shape().Dimensions[1]
	t := ways - 1                                                    // candidate thresholds per pass
	nth := AddScalar(Iota(g, shapes.Make(dtypes.Int32, 1, t), 1), 1) // [1, T]: 1..T
	b3 := Reshape(bits, h, 1, k)
	c3 := BroadcastToDims(Reshape(counts, h, 1, k), h, t, k)
	lo := Zeros(g, shapes.Make(dtypes.Int32, h, 1))                    // count(bits ≥ lo) ≥ budget
	hi := BroadcastToDims(Scalar(g, dtypes.Int32, maxScoreBits), h, 1) // count(bits ≥ hi) < budget
	for r := int64(maxScoreBits); r > 1; r = (r + int64(ways) - 1) / int64(ways) {
		step := MaxScalar(DivScalar(AddScalar(Sub(hi, lo), ways-1), ways), 1) // [H, 1]: ⌈(hi-lo)/ways⌉
		cand := Add(lo, Mul(step, nth))                                       // [H, T]
		ge := GreaterOrEqual(BroadcastToDims(b3, h, t, k), BroadcastToDims(Reshape(cand, h, t, 1), h, t, k))
		n := ReduceSum(Where(ge, c3, ZerosLike(c3)), -1) // [H, T]: keys scoring ≥ each candidate
		// n falls as the candidate rises, so the candidates that keep the budget are a prefix.
		ok := And(GreaterOrEqual(n, BroadcastToDims(budget, h, t)), LessThan(cand, hi))
		j := ReduceAndKeep(ConvertDType(ok, dtypes.Int32), ReduceSum, -1) // [H, 1]
		lo, hi = Add(lo, Mul(step, j)), Min(hi, Add(lo, Mul(step, AddScalar(j, 1))))
	}
	return lo
}

// ScoreBits are the float bits of non-negative scores [H, K] (negative ones and NaN count as 0): an int32
// order-preserving image of the scores.
func ScoreBits(scores *Node) *Node {
	s := ConvertDType(scores, dtypes.Float32)
	s = Where(GreaterThan(s, ZerosLike(s)), s, ZerosLike(s)) // NaN → 0 as well
	return Bitcast(s, dtypes.Int32)
}

// ClusterOrder lists, per head, the clustered keys (rows [0, clustered) of labels [H, S]) sorted by
// cluster, in position order within a cluster, then the other rows (the window and padding) in position
// order: order [H, S] int32. starts [H, K] int32 is the first slot of each cluster in that order
// (exclusive cumulative counts; counts [H, K] as KMeans returns them). It runs once per fixed context.
func ClusterOrder(labels, counts, clustered *Node) (order, starts *Node) {
	g := labels.Graph()
	h, s := labels.Shape().Dimensions[0], labels.Shape().Dimensions[1]
	k := counts.Shape().Dimensions[1]
	pos := Iota(g, shapes.Make(dtypes.Int32, h, s), 1)
	inClusters := LessThan(pos, BroadcastToDims(ConvertDType(clustered, dtypes.Int32), h, s))
	key := Where(inClusters, ConvertDType(labels, dtypes.Int32), Scalar(g, dtypes.Int32, k)) // others last
	order = sortByKey(key, pos)
	n := ConvertDType(counts, dtypes.Int32)
	starts = Sub(CumSum(n, 1), n)
	return order, starts
}

// PermuteRows reorders the rows of x [H, S, D] per head: row i of the result is row order[h, i] of x.
// With ClusterOrder's order it stores a fixed context's keys or values sorted by cluster.
func PermuteRows(x, order *Node) *Node { return GatherRows(x, order) }

// SelectKeys is the kept-key index list of one step in budget mode: per head, the budget keys with the
// highest cluster scores (scores [H, K] ≥ 0, counts [H, K]), then the observation window, rows
// [clustered, clustered+window). It returns idx [H, B] int32 (0 in unused slots), valid [H, B] bool
// and kept [H] int32: the valid slots are always a prefix of kept slots.
//
// The kept keys are those of BudgetMaskN(KeyScores(scores, labels), budget) where no two clusters tie
// at the budget's boundary score (ties between clusters are broken by cluster id here, by position there;
// either way exactly budget keys are kept). The list is in cluster order, not position order; attention
// does not depend on it.
//
// starts [H, K] and order [H, S] come from ClusterOrder. order = nil means the keys are stored sorted by
// cluster (PermuteRows), so cluster c's keys are rows starts[c]..starts[c]+counts[c]-1 themselves.
// budget, clustered and window are scalar int32 nodes; b is the static list size (bucketed, at least
// budget+window; keys beyond it are dropped, the window's last).
func SelectKeys(scores, counts, starts, order, budget, clustered, window *Node, b int) (idx, valid, kept *Node) {
	idx, valid, kept, _ = selectKeys(scores, counts, starts, order, budget, clustered, window, b, SearchAuto)
	return idx, valid, kept
}

// selectKeys is SelectKeys with the given boundary search. taken [H, K] int32 is the number of each
// cluster's keys in the list.
func selectKeys(scores, counts, starts, order, budget, clustered, window *Node, b int, search Search) (idx, valid, kept, taken *Node) {
	bits := ScoreBits(scores)
	n := ConvertDType(counts, dtypes.Int32)
	lo := boundary(bits, n, budget, search) // [H, 1]
	h, k := bits.Shape().Dimensions[0], bits.Shape().Dimensions[1]
	loB := BroadcastToDims(lo, h, k)
	strict := Where(GreaterThan(bits, loB), n, ZerosLike(n)) // clusters above the boundary: all their keys
	ties := Where(Equal(bits, loB), n, ZerosLike(n))         // at the boundary: as many keys as still fit
	return expandClusters(strict, ties, starts, order, budget, clustered, window, b)
}

// SelectKeysThreshold is SelectKeys in calibrated-threshold mode: the keys of the clusters scoring
// above the threshold (a scalar float32), at most budget of them (the best ones when more pass: the
// static list has room for budget + window), then the window. The number kept varies per head.
func SelectKeysThreshold(scores, counts, starts, order, threshold, budget, clustered, window *Node, b int) (idx, valid, kept *Node) {
	// A cluster below the threshold weighs nothing: the budget search and the runs skip it.
	n := Where(aboveThreshold(scores, threshold), counts, ZerosLike(counts))
	idx, valid, kept, _ = selectKeys(scores, n, starts, order, budget, clustered, window, b, SearchAuto)
	return idx, valid, kept
}

// aboveThreshold is the mask [H, K] of the clusters whose score is above the threshold (a scalar).
func aboveThreshold(scores, threshold *Node) *Node {
	s := ConvertDType(scores, dtypes.Float32)
	return GreaterThan(s, BroadcastToDims(ConvertDType(threshold, dtypes.Float32), s.Shape().Dimensions...))
}

// SelectKeysMass is SelectKeys in the attention-mass mode: per head, the clusters in decreasing order of
// score, until their estimated attention mass reaches target (a scalar float32 in (0, 1]), at most budget
// keys of them (the best ones when more: the static list has room for budget + window), then the window.
// A cluster's estimated mass is its count × its score (ClusterScores: over all clusters it sums to 1), so
// a head whose attention is spread over many keys keeps many, and a head that attends to a few clusters
// keeps few: the number kept varies per head and step. Every cluster tied with the last one needed is
// kept; a target above the total mass (rounding, or a hierarchical index's unscored clusters) keeps them
// all.
func SelectKeysMass(scores, counts, starts, order, target, budget, clustered, window *Node, b int) (idx, valid, kept *Node) {
	n := Where(massKeep(scores, counts, target, SearchAuto), counts, ZerosLike(counts))
	idx, valid, kept, _ = selectKeys(scores, n, starts, order, budget, clustered, window, b, SearchAuto)
	return idx, valid, kept
}

// massKeep is SelectKeysMass' cluster mask [H, K]: the clusters whose score is at least the largest
// score lo with mass(score ≥ lo) ≥ target (all of them when the total mass is below the target).
func massKeep(scores, counts, target *Node, search Search) *Node {
	f32 := dtypes.Float32
	s := ConvertDType(scores, f32)
	bits := ScoreBits(s)
	mass := Mul(Where(GreaterThan(s, ZerosLike(s)), s, ZerosLike(s)), ConvertDType(counts, f32)) // [H, K]
	t := ConvertDType(target, f32)
	lo := boundary(bits, mass, t, search) // [H, 1]
	return GreaterOrEqual(bits, BroadcastToDims(lo, bits.Shape().Dimensions...))
}

// expandClusters writes the index list: slots [0, total) hold the keys of the clusters, every key of
// the `strict` clusters (taken counts [H, K]) and then keys of the `ties` clusters in cluster order, up
// to limit keys in all (a scalar int32); slots [total, total+window) hold the window rows. taken [H, K]
// int32 counts each cluster's keys in the list.
func expandClusters(strict, ties, starts, order, limit, clustered, window *Node, b int) (idx, valid, kept, taken *Node) {
	g := strict.Graph()
	h, k := strict.Shape().Dimensions[0], strict.Shape().Dimensions[1]
	c, offset, total, begin := expandRuns(strict, ties, limit, b)
	// Run v holds slots [begin_v, begin_v + w_v), cut at total.
	w := Concatenate([]*Node{strict, ties}, 1)
	tk := Min(MaxScalar(Sub(BroadcastToDims(total, h, 2*k), begin), 0), w)
	taken = Add(Slice(tk, AxisRange(), AxisRange(0, k)), Slice(tk, AxisRange(), AxisRange(k, 2*k)))
	slot := Iota(g, shapes.Make(dtypes.Int32, h, b), 1) // [H, B]
	row := Add(takeAlong(starts, c), offset)
	s := -1
	if order != nil {
		s = order.Shape().Dimensions[1]
		row = takeAlong(order, Clamp(Scalar(g, dtypes.Int32, 0), row, Scalar(g, dtypes.Int32, s-1)))
	}
	totalB := BroadcastToDims(total, h, b)
	win := ConvertDType(window, dtypes.Int32)
	end := Add(totalB, BroadcastToDims(win, h, b))
	winRow := Add(BroadcastToDims(ConvertDType(clustered, dtypes.Int32), h, b), Sub(slot, totalB))
	inClusters := LessThan(slot, totalB)
	valid = LessThan(slot, end)
	idx = Where(inClusters, row, Where(valid, winRow, ZerosLike(row)))
	if s > 0 {
		idx = Clamp(Scalar(g, dtypes.Int32, 0), idx, Scalar(g, dtypes.Int32, s-1))
	}
	kept = MinScalar(Reshape(Add(total, Reshape(win, 1, 1)), h), b)
	return idx, valid, kept, taken
}

// expandRuns lays runs of slots out in a static list of b slots: one run per cluster of `strict`'s
// width (taken counts [H, K] int32) in cluster order, then one per cluster of `ties`' width, up to limit
// slots in all (a scalar int32). It returns, for every slot [H, B], the cluster c of its run and its
// offset within the run, total [H, 1], the number of slots used: slots ≥ total are free (their c and
// offset are meaningless), and begin [H, 2K], the first slot of every run (strict ones, then tied ones).
func expandRuns(strict, ties, limit *Node, b int) (c, offset, total, begin *Node) {
	g := strict.Graph()
	h, k := strict.Shape().Dimensions[0], strict.Shape().Dimensions[1]
	// Runs of slots: the strict clusters in id order, then the tied ones. [H, 2K]
	w := Concatenate([]*Node{strict, ties}, 1)
	cum := CumSum(w, 1) // inclusive: slots [cum-w, cum) belong to run v
	limit = ConvertDType(limit, dtypes.Int32)
	total = Min(Slice(cum, AxisRange(), AxisElem(2*k-1)), BroadcastToDims(limit, h, 1)) // [H, 1]
	slot := Iota(g, shapes.Make(dtypes.Int32, h, b), 1)                                 // [H, B]
	v := searchRight(cum, slot)                                                         // run of each slot
	v = MinScalar(v, 2*k-1)
	begin = Sub(cum, w)
	first := takeAlong(begin, v) // first slot of the run
	return ModScalar(v, k), Sub(slot, first), total, begin
}

// searchRight returns, for every query x [H, B] (of sorted's dtype), the number of entries of the
// non-decreasing rows of sorted [H, N] that are ≤ x (int32) (the first index whose entry exceeds x; N when none): a binary search of
// ⌈log2(N+1)⌉ gathers, each a [H, B] lookup in a table small enough to stay in cache.
func searchRight(sorted, x *Node) *Node {
	g := sorted.Graph()
	n := sorted.Shape().Dimensions[1]
	lo := Zeros(g, shapes.Make(dtypes.Int32, x.Shape().Dimensions...)) // x may be float
	hi := AddScalar(lo, n)
	for span := n; span > 0; span /= 2 { // ⌈log2(n+1)⌉ halvings
		active := LessThan(lo, hi)
		mid := MinScalar(DivScalar(Add(lo, hi), 2), n-1)
		above := GreaterThan(takeAlong(sorted, mid), x)
		hi = Where(And(active, above), mid, hi)
		lo = Where(And(active, Not(above)), AddScalar(mid, 1), lo)
	}
	return lo
}

// takeAlong gathers per row: out[h, j] = table[h, at[h, j]] for table [H, N] and at [H, B] int32.
func takeAlong(table, at *Node) *Node {
	g := table.Graph()
	h, n := table.Shape().Dimensions[0], table.Shape().Dimensions[1]
	b := at.Shape().Dimensions[1]
	base := MulScalar(Iota(g, shapes.Make(dtypes.Int32, h, b), 0), n)
	flat := Reshape(table, h*n)
	return Gather(flat, ExpandAxes(Add(base, at), -1)) // [H, B]
}
