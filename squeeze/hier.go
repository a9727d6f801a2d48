package squeeze

import (
	"math"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
)

// The hierarchical (two-level) index.
//
// Level 2 (fine) is the flat index: K centroids of the keys. Level 1 (coarse) clusters the K fine
// centroids into K1 coarse centroids (KMeansCoarse: cosine assignment, each fine centroid weighted by its
// number of keys, so that a coarse centroid is the mean of its children's keys). The fine arrays are
// stored grouped by coarse cluster (GroupChildren, PermuteClusters): coarse cluster c's children are the
// fine clusters first[c] .. first[c]+children[c]-1 with first the exclusive cumulative sum of children,
// and the empty fine clusters come last, in no coarse cluster.
//
// Online (HierarchicalScores), a step scores the K1 coarse centroids, takes the best coarse clusters
// until their children fill a static list of F slots (LayerIndex.FineSlots; the count-weighted search of
// SelectKeys, each coarse cluster weighing its number of children; the boundary cluster contributes its
// first children), gathers only those F fine centroids and scores them. The fine clusters outside the
// list are not scored: they have probability 0 and take no part in the selection, which runs on the F
// slots exactly as on the K clusters of a flat index (SelectKeys / SelectKeysThreshold). A step reads
// K1 + F centroids instead of K, and the fine selection works on F clusters.
//
// The normaliser Σ_j N_j exp(q·C_j·scale) of the fine estimate runs over the scored fine clusters plus,
// for every coarse cluster, its unscored children's keys taken at the coarse centroid, so that the fine
// scores estimate what a flat index's do; with every coarse cluster kept they are exactly a flat index's.

// KMeansCoarse clusters the fine centroids [H, K, D] of an index, with their counts [H, K] (keys per
// fine cluster, 0: empty), into k1 coarse clusters per head, with KMeans' semantics: cosine assignment
// of the L2-normalised fine centroids, iters Lloyd iterations, each fine centroid weighted by its count;
// then each coarse centroid is the count-weighted mean of its children's (un-normalised) centroids, that
// is the mean of its children's keys. Empty fine clusters belong to no coarse cluster (label -1). It
// returns coarse centroids [H, K1, D] float32 (zero for an empty coarse cluster), labels [H, K] int32 and
// coarse counts [H, K1] float32 (keys per coarse cluster; 0 marks an empty one). Seeds: k1 non-empty
// fine centroids spread evenly over them.
func KMeansCoarse(centroids, counts *Node, k1, iters int) (coarse, labels, coarseCounts *Node) {
	g := centroids.Graph()
	h, k, d := centroids.Shape().Dimensions[0], centroids.Shape().Dimensions[1], centroids.Shape().Dimensions[2]
	f32, i32 := dtypes.Float32, dtypes.Int32
	pts := ConvertDType(centroids, f32)
	w := ConvertDType(counts, f32) // [H, K]
	nonEmpty := GreaterThan(w, ZerosLike(w))
	unit := L2NormalizeWithEpsilon(pts, 1e-12, -1) // [H, K, D]

	// Seed j is the ⌊j·n/K1⌋-th of the n non-empty fine clusters (0-based).
	rank := CumSum(ConvertDType(nonEmpty, i32), 1)                                                         // [H, K] inclusive
	n := Slice(rank, AxisRange(), AxisElem(k-1))                                                           // [H, 1]
	target := Div(Mul(Iota(g, shapes.Make(i32, h, k1), 1), BroadcastToDims(n, h, k1)), Scalar(g, i32, k1)) // [H, K1]
	cent := GatherRows(unit, MinScalar(searchRight(rank, target), k-1))                                    // [H, K1, D]

	wk := ExpandAxes(w, -1) // [H, K, 1]
	var onehot *Node
	assign := func(c *Node) {
		sim := Einsum("hkd,hcd->hkc", unit, L2NormalizeWithEpsilon(c, 1e-12, -1)) // [H, K, K1] cosine similarity
		labels = ArgMax(sim, -1, i32)                                             // [H, K]
		onehot = Mul(OneHot(labels, k1, f32), wk)                                 // [H, K, K1]: weighted by keys
		coarseCounts = ReduceSum(onehot, 1)                                       // [H, K1]
	}
	for range iters {
		assign(cent)
		mean := Div(Einsum("hkc,hkd->hcd", onehot, unit), ExpandAxes(MaxScalar(coarseCounts, 1), -1))
		// An empty coarse cluster keeps its previous centroid (it may win fine clusters back later).
		kept := BroadcastToDims(ExpandAxes(GreaterThan(coarseCounts, ZerosLike(coarseCounts)), -1), h, k1, d)
		cent = Where(kept, mean, cent)
	}
	assign(cent)
	coarse = Div(Einsum("hkc,hkd->hcd", onehot, pts), ExpandAxes(MaxScalar(coarseCounts, 1), -1)) // [H, K1, D]
	labels = Where(nonEmpty, labels, Scalar(g, i32, -1))
	return coarse, labels, coarseCounts
}

// GroupChildren orders the fine clusters by coarse cluster: perm [H, K] int32 lists, per head, the
// children of coarse cluster 0 (the non-empty fine clusters labelled 0 by KMeansCoarse) in fine-id
// order, then those of cluster 1, ..., then the empty fine clusters; children [H, K1] int32 is the
// number of fine clusters of each coarse cluster. counts [H, K] are the fine clusters' keys.
func GroupChildren(labels, counts *Node, k1 int) (perm, children *Node) {
	g := labels.Graph()
	h, k := labels.Shape().Dimensions[0], labels.Shape().Dimensions[1]
	nonEmpty := GreaterThan(ConvertDType(counts, dtypes.Float32), Scalar(g, dtypes.Float32, 0))
	key := Where(nonEmpty, Clamp(Scalar(g, dtypes.Int32, 0), ConvertDType(labels, dtypes.Int32),
		Scalar(g, dtypes.Int32, k1-1)), Scalar(g, dtypes.Int32, k1)) // [H, K]: empty ones last
	perm = sortByKey(key, Iota(g, shapes.Make(dtypes.Int32, h, k), 1))
	children = Slice(ReduceSum(OneHot(key, k1+1, dtypes.Int32), 1), AxisRange(), AxisRange(0, k1)) // [H, K1]
	return perm, children
}

// PermuteClusters renumbers a flat index's clusters: new cluster i is old cluster perm[h, i] (perm
// [H, K] a permutation per head, as GroupChildren returns). It returns the centroids [H, K, D] and counts
// [H, K] in the new order and the keys' labels [H, S] in the new numbering (labels of padding rows are
// mapped too; they stay meaningless).
func PermuteClusters(perm, centroids, counts, labels *Node) (c, n, l *Node) {
	g := perm.Graph()
	h, k := perm.Shape().Dimensions[0], perm.Shape().Dimensions[1]
	// inv[h, perm[h, i]] = i: the positions sorted by their perm value (a sort, not a scatter: XLA on the
	// GPU may turn a scatter into a loop).
	inv := sortByKey(perm, Iota(g, shapes.Make(dtypes.Int32, h, k), 1))
	l = takeAlong(inv, Clamp(Scalar(g, dtypes.Int32, 0), ConvertDType(labels, dtypes.Int32), Scalar(g, dtypes.Int32, k-1)))
	return GatherRows(centroids, perm), takeAlong(counts, perm), l
}

// Hierarchy is one layer's two-level index as KMeansHierarchical builds it: the fine level grouped by
// coarse cluster (see GroupChildren) and the coarse level.
type Hierarchy struct {
	Centroids *Node // [H, K, D] float32: fine centroids, coarse cluster 0's children first, empty ones last
	Counts    *Node // [H, K] float32: keys per fine cluster
	Labels    *Node // [H, S] int32: each key's fine cluster, in that numbering
	// CoarseCentroids [H, K1, D] float32 are the mean keys of the coarse clusters, CoarseCounts [H, K1]
	// float32 their keys, and Children [H, K1] int32 their fine clusters.
	CoarseCentroids, CoarseCounts, Children *Node
}

// KMeansHierarchical builds a two-level index of keys [H, S, D] (the first `clustered` rows, as
// KMeansMasked): k fine clusters of the keys, then k1 coarse clusters of the fine centroids
// (KMeansCoarse), with the fine level renumbered so that each coarse cluster's children are contiguous.
func KMeansHierarchical(keys, clustered *Node, k, k1, iters int) Hierarchy {
	cent, labels, counts := KMeansMasked(keys, clustered, k, iters)
	coarse, coarseLabels, coarseCounts := KMeansCoarse(cent, counts, k1, iters)
	perm, children := GroupChildren(coarseLabels, counts, k1)
	cent, counts, labels = PermuteClusters(perm, cent, counts, labels)
	return Hierarchy{Centroids: cent, Counts: counts, Labels: labels, CoarseCentroids: coarse,
		CoarseCounts: coarseCounts, Children: children}
}

// sortByKey returns, per row, the payload sorted by key (stable): key and payload [H, N] int32.
func sortByKey(key, payload *Node) *Node {
	g := key.Graph()
	byKey := NewClosure(g, func(g *Graph) []*Node {
		lhs := Parameter(g, "lhs_key", shapes.Make(dtypes.Int32))
		rhs := Parameter(g, "rhs_key", shapes.Make(dtypes.Int32))
		_ = Parameter(g, "lhs_pos", shapes.Make(dtypes.Int32))
		_ = Parameter(g, "rhs_pos", shapes.Make(dtypes.Int32))
		return []*Node{LessThan(lhs, rhs)}
	})
	return SortFunc(byKey, 1, true, key, payload)[1]
}

// weightedLogits are the terms log N_c + logit of a count-weighted normaliser: logits [H, M, K],
// counts [H, K]; -1e30 for empty clusters. (LogClusterProb's, for reuse.)
func weightedLogits(logits, counts *Node) (weighted, nonEmpty *Node) {
	nonEmpty = ExpandAxes(GreaterThan(counts, ZerosLike(counts)), 1) // [H, 1, K]
	nonEmpty = BroadcastToDims(nonEmpty, logits.Shape().Dimensions...)
	logN := Log(MaxScalar(counts, 1)) // [H, K]
	return Where(nonEmpty, Add(logits, ExpandAxes(logN, 1)), Scalar(logits.Graph(), dtypes.Float32, negInf)), nonEmpty
}

// logAddExp is log(exp(a) + exp(b)), stable; exactly a when b is -1e30 and a is not.
func logAddExp(a, b *Node) *Node {
	m := Max(a, b)
	return Add(m, Log(Add(Exp(Sub(a, m)), Exp(Sub(b, m)))))
}

// The coarse level is small (K1 ≈ K/5), so its selection compares all pairs at once instead of searching
// in passes: on an accelerator, where a step's small kernels run one after the other, a few wide fused
// comparisons cost less than the dozens of dependent passes of budgetBits and searchRight.

// boundaryBits is budgetBits by comparing all pairs: per head, the largest score bits lo [H, 1] (of bits
// [H, K1]) with count(bits ≥ lo) ≥ budget, counts weighted (counts [H, K1] int32, budget a scalar
// int32); -1 when even all of them weigh less than the budget. Where budgetBits' lo is positive they
// are equal: count(bits > lo) < budget holds too.
func boundaryBits(bits, counts, budget *Node) *Node {
	h, k := bits.Shape().Dimensions[0], bits.Shape().Dimensions[1]
	ge := GreaterOrEqual(BroadcastToDims(Reshape(bits, h, 1, k), h, k, k), BroadcastToDims(Reshape(bits, h, k, 1), h, k, k)) // [H, K, K']: bits[k'] ≥ bits[k]
	c3 := BroadcastToDims(Reshape(counts, h, 1, k), h, k, k)
	n := ReduceSum(Where(ge, c3, ZerosLike(c3)), -1) // [H, K]: weight at or above each cluster's score
	ok := GreaterOrEqual(n, BroadcastToDims(budget, h, k))
	return ReduceAndKeep(Where(ok, bits, Scalar(bits.Graph(), dtypes.Int32, -1)), ReduceMax, 1)
}

// expandRunsDense is expandRuns with each slot's run found by counting, for all runs at once, the runs
// that end at or before it (instead of a binary search): the same results.
func expandRunsDense(strict, ties, limit *Node, b int) (c, offset, total, begin *Node) {
	g := strict.Graph()
	h, k := strict.Shape().Dimensions[0], strict.Shape().Dimensions[1]
	w := Concatenate([]*Node{strict, ties}, 1)
	cum := CumSum(w, 1) // [H, 2K] inclusive
	total = Min(Slice(cum, AxisRange(), AxisElem(2*k-1)), BroadcastToDims(ConvertDType(limit, dtypes.Int32), h, 1))
	slot := Iota(g, shapes.Make(dtypes.Int32, h, b), 1) // [H, B]
	ended := LessOrEqual(BroadcastToDims(Reshape(cum, h, 1, 2*k), h, b, 2*k), BroadcastToDims(Reshape(slot, h, b, 1), h, b, 2*k))
	v := MinScalar(ReduceSum(ConvertDType(ended, dtypes.Int32), -1), 2*k-1) // [H, B]: the run of each slot
	begin = Sub(cum, w)
	return ModScalar(v, k), Sub(slot, takeAlong(begin, v)), total, begin
}

// hierLookup is one step's hierarchical lookup (see HierarchicalScores): the slot arrays [H, F] and,
// per coarse cluster [H, K1] int32, its first child, the number of its children taken (always its first
// ones) and the slot of the first of them.
type hierLookup struct {
	fine, scores, counts, starts *Node
	first, taken, slotStart      *Node
	// For the remainder (hierRemainder): the fine slots' and coarse clusters' per-key log-probabilities
	// logPF [H, M, F] and logPC [H, M, K1] (-1e30 where empty), the normaliser logZ [H, M, 1], and each coarse
	// cluster's keys in unscored children, unscored [H, K1] float32.
	logPF, logPC, logZ, unscored *Node
}

func hierarchicalLookup(qg *Node, ix LayerIndex, scale float64) hierLookup {
	g := qg.Graph()
	f32, i32 := dtypes.Float32, dtypes.Int32
	h, k := ix.Counts.Shape().Dimensions[0], ix.Counts.Shape().Dimensions[1]
	k1, f := ix.CoarseCounts.Shape().Dimensions[1], ix.FineSlots

	// Level 1: every coarse centroid's estimated probability, count-weighted as the fine ones.
	lc := MulScalar(centroidLogits(qg, ix.CoarseCentroids), scale) // [H, M, K1]
	cc := ConvertDType(ix.CoarseCounts, f32)
	wc, nonEmptyC := weightedLogits(lc, cc)
	coarseScores := ReduceMean(Exp(Where(nonEmptyC, Sub(lc, logSumExp(wc, -1)), Scalar(g, f32, negInf))), 1) // [H, K1]

	// The best coarse clusters until their children fill the F slots (all of them, in order, if they fit).
	children := ConvertDType(ix.CoarseChildren, i32) // [H, K1]
	first := Sub(CumSum(children, 1), children)      // [H, K1]: first child in the fine arrays
	bits := ScoreBits(coarseScores)
	budget := Scalar(g, i32, f)
	lo := BroadcastToDims(boundaryBits(bits, children, budget), h, k1)
	fits := BroadcastToDims(LessOrEqual(ReduceAndKeep(children, ReduceSum, 1), budget), h, k1)
	strict := Where(Or(fits, GreaterThan(bits, lo)), children, ZerosLike(children))
	ties := Where(And(Not(fits), Equal(bits, lo)), children, ZerosLike(children))
	parent, offset, total, begin := expandRunsDense(strict, ties, budget, f) // [H, F], [H, F], [H, 1], [H, 2·K1]
	// A coarse cluster's run is its strict one or its tied one (the other is empty): taken children and first slot.
	w := Concatenate([]*Node{strict, ties}, 1)
	takenRun := Min(MaxScalar(Sub(BroadcastToDims(total, h, 2*k1), begin), 0), w) // [H, 2·K1]
	runs := func(x *Node, from int) *Node { return Slice(x, AxisRange(), AxisRange(from, from+k1)) }
	taken := Add(runs(takenRun, 0), runs(takenRun, k1))                                         // [H, K1]
	slotStart := Where(GreaterThan(strict, ZerosLike(strict)), runs(begin, 0), runs(begin, k1)) // [H, K1]

	used := LessThan(Iota(g, shapes.Make(i32, h, f), 1), BroadcastToDims(total, h, f))
	fine := Clamp(Scalar(g, i32, 0), Add(takeAlong(first, parent), offset), Scalar(g, i32, k-1)) // [H, F]
	fineCounts := ConvertDType(ix.Counts, f32)
	counts := Where(used, takeAlong(fineCounts, fine), Zeros(g, shapes.Make(f32, h, f)))
	starts := ConvertDType(ix.Starts, i32)

	// Level 2: only the F gathered fine centroids. The normaliser adds, per coarse cluster, the keys of its
	// unscored children at the coarse centroid (none when every child is scored: then exactly flat). The
	// keys of a coarse cluster's first t children are a difference of Starts (exclusive cumulative counts).
	keysBefore := func(j *Node) *Node { // [H, K1]: keys of the fine clusters before j (j ≤ K)
		last := Add(Slice(starts, AxisRange(), AxisElem(k-1)), ConvertDType(Slice(fineCounts, AxisRange(), AxisElem(k-1)), i32))
		return Where(LessThan(j, Scalar(g, i32, k)), takeAlong(starts, MinScalar(j, k-1)), BroadcastToDims(last, h, k1))
	}
	scored := ConvertDType(Sub(keysBefore(Add(first, taken)), keysBefore(first)), f32) // [H, K1]
	unscored := MaxScalar(Sub(cc, scored), 0)                                          // [H, K1]
	rest, nonEmptyRest := weightedLogits(lc, unscored)                                 // [H, M, K1]
	lf := MulScalar(centroidLogits(qg, GatherRows(ix.Centroids, fine)), scale)         // [H, M, F]
	wf, nonEmptyF := weightedLogits(lf, counts)
	logZ := logAddExp(logSumExp(wf, -1), logSumExp(rest, -1)) // [H, M, 1]
	logPF := Where(nonEmptyF, Sub(lf, logZ), Scalar(g, f32, negInf))
	scores := ReduceMean(Exp(logPF), 1) // [H, F]
	return hierLookup{fine: fine, scores: scores, counts: counts, starts: takeAlong(starts, fine),
		first: first, taken: taken, slotStart: slotStart,
		logPF: logPF, logPC: Where(nonEmptyRest, Sub(lc, logZ), Scalar(g, f32, negInf)), logZ: logZ, unscored: unscored}
}

// HierarchicalMeanSums are the running sums a hierarchical index's remainder reads: means [H, K, D] (the
// fine clusters' mean values, ClusterMeans, in the index's grouped order) weighted by counts [H, K] and summed
// over the fine clusters before each: [H, K+1, D] float32, row j the sum over clusters < j (row K: all). The
// values of a coarse cluster's children j0..j1-1 sum to row j1 − row j0.
func HierarchicalMeanSums(means, counts *Node) *Node {
	g := means.Graph()
	f32 := dtypes.Float32
	h, k, d := means.Shape().Dimensions[0], means.Shape().Dimensions[1], means.Shape().Dimensions[2]
	w := Mul(ConvertDType(means, f32), BroadcastToDims(Reshape(ConvertDType(counts, f32), h, k, 1), h, k, d))
	return Concatenate([]*Node{Zeros(g, shapes.Make(f32, h, 1, d)), CumSum(w, 1)}, 1)
}

// hierRemainder is RemainderAttention over a hierarchical index, from its lookup: the scored fine slots'
// dropped keys [H, F] stand as their fine centroid with their cluster's mean value (as a flat index's), and
// every coarse cluster's keys in unscored children stand as the coarse centroid with those children's mean
// value (from ix.MeanSums: exact, not the coarse cluster's whole mean), both weighed against the lookup's own
// normaliser, which already counts them. With every fine cluster scored it is the flat index's remainder.
func hierRemainder(l hierLookup, ix LayerIndex, dropped *Node) Partial {
	f32, i32 := dtypes.Float32, dtypes.Int32
	h, k1 := l.unscored.Shape().Dimensions[0], l.unscored.Shape().Dimensions[1]
	d := ix.Means.Shape().Dimensions[2]
	children := ConvertDType(ix.CoarseChildren, i32)
	sum := Sub(GatherRows(ix.MeanSums, Add(l.first, children)), GatherRows(ix.MeanSums, Add(l.first, l.taken))) // [H, K1, D]
	valsC := Div(sum, BroadcastToDims(Reshape(MaxScalar(l.unscored, 1), h, k1, 1), h, k1, d))
	valsF := ConvertDType(GatherRows(ix.Means, l.fine), f32) // [H, F, D]
	return remainderFromLookup(Concatenate([]*Node{l.logPF, l.logPC}, 2), l.logZ,
		Concatenate([]*Node{valsF, valsC}, 1), Concatenate([]*Node{ConvertDType(dropped, f32), l.unscored}, 1))
}

// HierarchicalScores is a hierarchical index's centroid lookup for queries qg [H, M, D] (ix.CoarseCentroids
// set; see the comment at the top of this file): the coarse centroids are scored, the children of the
// best coarse clusters fill ix.FineSlots slots, and only those fine centroids are scored. Per slot
// [H, F] it returns the fine cluster (an index into ix's fine arrays), its score (ClusterScores' mean
// estimated probability), its count and its start in ix.Order; free slots have count 0 and score 0.
// When every coarse cluster's children fit (FineSlots ≥ the non-empty fine clusters), slot i is fine
// cluster i and the scores are exactly ClusterScores' over the fine level. ix.Starts must be
// ClusterOrder's (the exclusive cumulative counts). It reads K1 + F centroids, and uses no scatter (XLA on
// the GPU may run one as a loop).
func HierarchicalScores(qg *Node, ix LayerIndex, scale float64) (fine, scores, counts, starts *Node) {
	l := hierarchicalLookup(qg, ix, scale)
	return l.fine, l.scores, l.counts, l.starts
}

// HierarchicalClusterScores is HierarchicalScores laid out over the fine clusters, for threshold
// calibration: [H, K], the score of every scored fine cluster and -Inf for the others (unscored or
// empty), which CalibrateClusters counts as always dropped, as the online selection does.
func HierarchicalClusterScores(qg *Node, ix LayerIndex, scale float64) *Node {
	g := qg.Graph()
	i32 := dtypes.Int32
	h, k := ix.Counts.Shape().Dimensions[0], ix.Counts.Shape().Dimensions[1]
	l := hierarchicalLookup(qg, ix, scale)
	f := l.fine.Shape().Dimensions[1]
	k1 := l.first.Shape().Dimensions[1]
	// Fine cluster j's coarse cluster p (children [first[p], end[p])), and its slot if it was taken.
	end := CumSum(ConvertDType(ix.CoarseChildren, i32), 1) // [H, K1]
	j := Iota(g, shapes.Make(i32, h, k), 1)                // [H, K]
	p := MinScalar(searchRight(end, j), k1-1)
	off := Sub(j, takeAlong(l.first, p))
	taken := And(LessThan(j, takeAlong(end, p)), LessThan(off, takeAlong(l.taken, p)))
	slot := Clamp(Scalar(g, i32, 0), Add(takeAlong(l.slotStart, p), off), Scalar(g, i32, f-1))
	scored := And(taken, GreaterThan(takeAlong(l.counts, slot), Scalar(g, dtypes.Float32, 0)))
	return Where(scored, takeAlong(l.scores, slot), Scalar(g, dtypes.Float32, math.Inf(-1)))
}
