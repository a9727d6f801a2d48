package squeeze

import (
	"github.com/gomlx/compute/dtypes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// LayerIndex is one layer's Squeezed Attention index inside a step graph, for the online path (Select,
// Attend). The shapes are static (they follow the context capacity); the counts that vary per fixed
// context are scalar inputs.
type LayerIndex struct {
	Centroids *Node // [H, K, D]: bfloat16 halves the bytes every lookup reads (float32 also works)
	Counts    *Node // [H, K] float32: keys per cluster (0: empty)
	Starts    *Node // [H, K] int32: first slot of each cluster in Order (ClusterOrder)
	// Order [H, S] int32 lists the keys sorted by cluster (ClusterOrder). nil: the fixed context's keys
	// and values are stored sorted by cluster (PermuteRows), so a cluster is a contiguous run of rows.
	Order                     *Node
	Clustered, Window, Budget *Node // scalar int32: clustered keys, window rows after them, kept clustered keys
	// Threshold is the calibrated mode's threshold on a cluster's estimated probability (scalar float32):
	// the clusters above it are kept, at most Budget keys (the best). nil: fixed-budget mode.
	Threshold *Node
	// Mass makes Threshold the attention-mass mode's target (SelectKeysMass): each head keeps its best
	// clusters until their estimated attention mass reaches it.
	Mass    bool
	MaxKept int // static size of the kept-key lists (≥ Budget + Window)
	// Search is how the selection finds the budget's boundary among the clusters (SearchAuto: see there; a
	// hierarchical index searches in passes then) when XLA's ops select.
	Search Search
	// Select says when this index's selection runs in the selection kernels (selectk.go): SelectAuto (the zero
	// value) as the package's SelectKernels says, SelectOff or SelectOn whatever it says.
	Select SelectMode
	// Scores says when this index's cluster scores run in the cluster-score kernels (scoresk.go; a flat index
	// without Means, steps of at least ScoresMinQueries query rows a KV head): SelectAuto (the zero value) as
	// the package's ScoresKernels says, SelectOff or SelectOn whatever it says.
	Scores SelectMode
	// Seg says when AttendSelectedDyn attends the dynamic segment inside the paged kernel's launch (pagedSegList):
	// SelectAuto (the zero value) as the package's PagedSeg says, SelectOff never, SelectOn wherever the paged kernel
	// reads the kept keys and there is a kernel.
	Seg SelectMode
	// Lookup says when a step's cluster scores and boundary run in the lookup kernel (lookupk.go; a flat index
	// without Means, not Mass, steps of at most LookupMaxQueries query rows a KV head, with the selection kernels):
	// SelectAuto (the zero value) as the package's LookupKernel says, SelectOff or SelectOn whatever it says.
	Lookup SelectMode
	// Means [H, K, D] is each cluster's mean value (ClusterMeans). Set, Attend attends the keys a step
	// drops approximately (RemainderAttention) instead of leaving them out. A hierarchical index needs
	// MeanSums too (HierarchicalMeanSums of Means and Counts).
	Means, MeanSums *Node

	// The coarse level of a hierarchical index (hier.go); CoarseCentroids nil: a flat index. The fine
	// arrays above are then grouped by coarse cluster (KMeansHierarchical): coarse cluster c's children
	// are the fine clusters first[c] .. first[c]+CoarseChildren[c]-1, first the exclusive cumulative sum
	// of CoarseChildren, and the empty fine clusters come last.
	CoarseCentroids *Node // [H, K1, D]: each the mean of its children's keys
	CoarseCounts    *Node // [H, K1] float32: keys per coarse cluster (0: empty)
	CoarseChildren  *Node // [H, K1] int32: fine clusters per coarse cluster
	// FineSlots is the static number of fine clusters scored per step (≤ K): the children of the best
	// coarse clusters. FineSlots ≥ the non-empty fine clusters scores them all (the flat selection).
	FineSlots int
}

// Select is one step's centroid lookup: the estimated probability of every cluster for the queries qg
// [H, M, D] (a KV head's query heads × the step's tokens, one selection for them all), then the kept
// keys' index lists (SelectKeys / SelectKeysThreshold): idx [H, MaxKept] int32, valid [H, MaxKept]
// bool (a prefix of kept [H] int32 slots).
//
// With a hierarchical index (ix.CoarseCentroids set) the lookup is HierarchicalScores': only the
// ix.FineSlots fine clusters under the best coarse clusters are scored, and the selection runs on them
// (the other fine clusters have probability 0 and none of their keys is kept).
func Select(qg *Node, ix LayerIndex, scale float64) (idx, valid, kept *Node) {
	idx, valid, kept, _ = SelectDropped(qg, ix, scale)
	return idx, valid, kept
}

// SelectDropped is Select, and dropped [H, K] float32: the keys of each cluster that the list leaves
// out (the cluster's count less its keys in the list), for RemainderAttention. With a hierarchical
// index, dropped covers the scored fine slots' clusters only and is not meant for RemainderAttention.
func SelectDropped(qg *Node, ix LayerIndex, scale float64) (idx, valid, kept, dropped *Node) {
	s := selectLookup(qg, ix, scale, nil)
	return s.idx, s.valid, s.kept, s.dropped
}

// SelectRows is SelectDropped for kept lists indexing keys of `rows` rows a head: through the selection kernels
// where they run (ix.Select, SelectKernels; their list is in cluster order), else as SelectDropped.
func SelectRows(qg *Node, ix LayerIndex, scale float64, rows int) (idx, valid, kept, dropped *Node) {
	s := selectLookup(qg, ix, scale, &listPlan{s: rows})
	return s.idx, s.valid, s.kept, s.dropped
}

// selection is one step's lookup and selection (selectLookup).
type selection struct {
	idx, valid, kept, dropped *Node
	// logP [H, M, K] and logZ [H, M, 1] are a flat index's lookup (logClusterProbZ), for the remainder; nil
	// for a hierarchical index, whose lookup is hier.
	logP, logZ *Node
	hier       *hierLookup
	// gidx [H·bp] is the selection kernels' list (selectKernelList; nil when XLA selected), which idx and
	// valid are made from.
	gidx *Node
}

// listPlan asks selectLookup for the selection kernels' list, where they run: s rows a head in the keys the
// list indexes, its slots a head laid out for the paged kernel (paged) or just rounded up to the kernels'
// programs.
type listPlan struct {
	s     int
	paged bool
}

// listSlots is the slots a head of the selection kernels' list of b rows: for the paged kernel its layout's, else b
// rounded up to kernel B's programs.
func listSlots(b int, paged bool) int {
	if paged {
		_, _, bp := pagedLayout(b, selectSlots)
		return bp
	}
	return (b + selectSlots - 1) / selectSlots * selectSlots
}

// selectLookup is SelectDropped, keeping a flat index's lookup for the remainder (remainderFromLookup).
// With plan set and the selection kernels available (useSelectKernels), the list comes from them.
func selectLookup(qg *Node, ix LayerIndex, scale float64, plan *listPlan) (sel selection) {
	if plan != nil && useLookupKernel(qg, ix) {
		// The scores and the boundary in the lookup kernel, from XLA's logits: the same keys as below, in cluster
		// order.
		bp := listSlots(ix.MaxKept, plan.paged)
		var taken *Node
		logits := centroidLogits(qg, ix.Centroids) // [H, M, K] float32, unscaled: the kernel scales them
		sel.gidx, sel.kept, taken = lookupKernelList(logits, scale, ix.Counts, ix.Starts, ix.Order, ix.Threshold, ix.Budget, ix.Clustered, ix.Window, ix.MaxKept, plan.s, bp)
		sel.idx, sel.valid = listToIdx(sel.gidx, qg.Shape().Dimensions[0], plan.s, ix.MaxKept)
		sel.dropped = MaxScalar(Sub(ConvertDType(ix.Counts, dtypes.Float32), ConvertDType(taken, dtypes.Float32)), 0)
		return sel
	}
	var scores, counts, starts *Node
	switch {
	case ix.CoarseCentroids != nil:
		l := hierarchicalLookup(qg, ix, scale)
		sel.hier = &l
		scores, counts, starts = l.scores, l.counts, l.starts // [H, FineSlots]
	case ix.Means == nil && useScoresKernels(qg, ix.Centroids, ix.Scores):
		// The remainder needs the lookup's log-probabilities, which the kernels never write.
		scores, counts, starts = scoresKernel(qg, ix.Centroids, ix.Counts, scale), ix.Counts, ix.Starts
	default:
		sel.logP, sel.logZ = logClusterProbZ(qg, ix.Centroids, ix.Counts, scale)
		scores, counts, starts = ReduceMean(Exp(sel.logP), 1), ix.Counts, ix.Starts // [H, K]: ClusterScores
	}
	// The fine selection of a hierarchical index searches in passes by default: through XLA on an H100 the
	// all-pairs boundary made llama's TestHierarchicalPrefix keep a little less than every key at budget 1
	// (relative logit error 3.2e-4 against 1.0e-6 in passes, SQLLM_SQUEEZE_PASSES=1; session 5), which the
	// pure-Go backend does not reproduce with either search. Not understood yet; the flat index's all-pairs
	// search passes the same check (TestSqueezedPrefix, 1.7e-6).
	search := ix.Search
	if search == SearchAuto && ix.CoarseCentroids != nil {
		search = SearchPasses
	}
	// The counts the budget selection runs on: in calibrated mode the clusters below the threshold weigh
	// nothing, in the attention-mass mode those past the target (SelectKeysThreshold, SelectKeysMass).
	n := ConvertDType(counts, dtypes.Int32)
	switch {
	case ix.Threshold != nil && ix.Mass:
		n = Where(massKeep(scores, counts, ix.Threshold, search), n, ZerosLike(n))
	case ix.Threshold != nil:
		n = Where(aboveThreshold(scores, ix.Threshold), n, ZerosLike(n))
	}
	var taken *Node
	h, k := scores.Shape().Dimensions[0], scores.Shape().Dimensions[1]
	if plan != nil && useSelectKernels(qg.Graph(), k, ix.Order == nil, ix.Select) {
		// The same keys as selectKeys (from the same counts), in cluster order.
		bp := listSlots(ix.MaxKept, plan.paged)
		sel.gidx, sel.kept, taken = selectKernelList(ScoreBits(scores), n, starts, ix.Order, ix.Budget, ix.Clustered, ix.Window, ix.MaxKept, plan.s, bp)
		sel.idx, sel.valid = listToIdx(sel.gidx, h, plan.s, ix.MaxKept)
	} else {
		sel.idx, sel.valid, sel.kept, taken = selectKeys(scores, n, starts, ix.Order, ix.Budget, ix.Clustered, ix.Window, ix.MaxKept, search)
	}
	sel.dropped = MaxScalar(Sub(ConvertDType(counts, dtypes.Float32), ConvertDType(taken, dtypes.Float32)), 0)
	return sel
}

// AttendSelected is SelectDropped, the kept keys' attention with the given kernel (AttendKept), and with
// ix.Means set the remainder merged into it, from the same lookup; kept is Select's.
func AttendSelected(qg, ctxK, ctxV *Node, ix LayerIndex, scale float64, kernel Kernel) (p Partial, kept *Node) {
	plan := &listPlan{s: ctxK.Shape().Dimensions[1], paged: UsesPaged(qg, ctxK, ctxV, kernel)}
	s := selectLookup(qg, ix, scale, plan)
	if s.gidx != nil && plan.paged {
		// The kernels' list is in the paged kernel's format and layout already.
		ns, iters, _ := pagedLayout(ix.MaxKept, selectSlots)
		p = pagedList(qg, ctxK, ctxV, s.gidx, ns, iters, scale, pagedKernel(qg, ctxK, ctxV))
	} else {
		p = AttendKept(qg, ctxK, ctxV, s.idx, s.valid, s.kept, scale, kernel)
	}
	switch {
	case ix.Means == nil:
	case s.hier != nil && ix.MeanSums == nil:
		exceptions.Panicf("squeeze: the remainder over a hierarchical index needs LayerIndex.MeanSums")
	case s.hier != nil:
		p = Merge(p, hierRemainder(*s.hier, ix, s.dropped))
	default:
		p = Merge(p, remainderFromLookup(s.logP, s.logZ, ix.Means, s.dropped))
	}
	return p, s.kept
}

// AttendSelectedDyn is AttendSelected merged with the attention of the same queries over the dynamic segment dynK,
// dynV [H, T, D] (mask [1, M, T] bool, or [M, T]: the rows each query row sees, the same for every head):
// Merge(AttendSelected(...), DenseAttention(qg, dynK, dynV, mask)). Where the paged kernel reads the kept keys and
// PagedSeg takes it (pagedSegKernel; not with ix.Means), the dynamic segment is attended in the same launch
// (pagedSegList) instead.
func AttendSelectedDyn(qg, ctxK, ctxV, dynK, dynV, mask *Node, ix LayerIndex, scale float64, kernel Kernel) (p Partial, kept *Node) {
	m, t := qg.Shape().Dimensions[1], dynK.Shape().Dimensions[1]
	if mask.Rank() == 2 {
		mask = Reshape(mask, 1, m, t)
	}
	if d := mask.Shape().Dimensions; len(d) != 3 || d[0] != 1 || d[1] != m || d[2] != t {
		exceptions.Panicf("squeeze: dynamic-segment mask %s for %d query rows over %d rows: want [1, %d, %d]", mask.Shape(), m, t, m, t)
	}
	cfg := ""
	if ix.Means == nil {
		cfg = pagedSegKernel(qg, ctxK, ctxV, dynK, dynV, kernel, ix.Seg)
	}
	if cfg == "" {
		p, kept = AttendSelected(qg, ctxK, ctxV, ix, scale, kernel)
		return Merge(p, DenseAttention(qg, dynK, dynV, mask, scale)), kept
	}
	s := ctxK.Shape().Dimensions[1]
	sel := selectLookup(qg, ix, scale, &listPlan{s: s, paged: true})
	var gidx *Node
	var ns, iters int
	if sel.gidx != nil {
		// The kernels' list is in the paged kernel's format and layout already.
		gidx = sel.gidx
		ns, iters, _ = pagedLayout(ix.MaxKept, selectSlots)
	} else {
		gidx, ns, iters = pagedGlobalList(sel.idx, sel.valid, s)
	}
	return pagedSegList(qg, ctxK, ctxV, gidx, ns, iters, dynK, dynV, mask, scale, cfg), sel.kept
}

// RemainderAttention attends the queries q [H, M, D] to the keys a step dropped, approximately: each
// cluster with dropped [H, K] > 0 keys left out stands for them as one key, its centroid, weighted by
// their number (a log-count bias, as the lookup's estimate N_c·exp(q·C_c) of their attention mass), with
// its mean value means [H, K, D] (ClusterMeans). Merged by log-sum-exp with the kept keys' attention
// (Merge), the dropped clusters' estimated share of the attention is spread over their mean values
// instead of being lost (the reference renormalises over the kept keys alone). Exact where a cluster's
// keys all equal its centroid; a cluster with no dropped key weighs nothing, so with every key kept the
// result is the kept keys' attention alone. By Jensen's inequality exp(q·mean k) ≤ mean exp(q·k): the
// dropped mass is underestimated, never over.
func RemainderAttention(q, centroids, means, dropped *Node, scale float64) Partial {
	// The lookup's probabilities with the dropped counts as cluster sizes: p_c·dropped_c sums to 1 over
	// the clusters with dropped keys, and log Z is the log-sum-exp of their count-biased logits.
	logP, logZ := logClusterProbZ(q, centroids, ConvertDType(dropped, dtypes.Float32), scale)
	return remainderFromLookup(logP, logZ, means, dropped)
}

// remainderFromLookup is RemainderAttention from the lookup's own log-probabilities logP [H, M, K] and
// normaliser logZ [H, M, 1] (logClusterProbZ): cluster c's dropped keys weigh p_c·dropped_c relative to Z,
// so the partial's log-sum-exp is logZ + log Σ_c p_c·dropped_c and its output the p_c·dropped_c-weighted
// mean of the means: no second product with the centroids, maximum or exponential over [H, M, K].
func remainderFromLookup(logP, logZ, means, dropped *Node) Partial {
	g := logP.Graph()
	f32 := dtypes.Float32
	h, m, k := logP.Shape().Dimensions[0], logP.Shape().Dimensions[1], logP.Shape().Dimensions[2]
	w := Mul(Exp(logP), BroadcastToDims(Reshape(ConvertDType(dropped, f32), h, 1, k), h, m, k)) // [H, M, K]
	sum := ReduceAndKeep(w, ReduceSum, -1)                                                      // [H, M, 1]
	probs := Div(w, MaxScalar(sum, 1e-30))
	var out *Node
	if means.DType().IsHalfPrecision() {
		out = product("hmk,hkd->hmd", ConvertDType(probs, means.DType()), means)
	} else {
		out = product("hmk,hkd->hmd", probs, means)
	}
	seen := GreaterThan(sum, ZerosLike(sum))
	lse := Where(seen, Add(logZ, Log(MaxScalar(sum, 1e-30))), Scalar(g, f32, negInf))
	return Partial{Out: out, LSE: lse}
}

// Kernel chooses how the kept keys are attended.
type Kernel int

const (
	// KernelAuto: the fused flash attention for steps of at least FusedMinQueries query rows per KV head
	// where the backend has it (a user input), the paged kernel for decode steps as Paged says (by default
	// for up to PagedAutoMaxQueries query rows per KV head, on a backend that passed ProbePaged), else
	// KernelEinsum.
	KernelAuto Kernel = iota
	// KernelEinsum gathers the kept rows and attends with two batched products (SparseAttention).
	KernelEinsum
	// KernelReduce attends with multiply-and-sum reductions over the kept rows (SparseAttentionReduce),
	// which a compiler can fuse with the gathers: the kept rows are read once, never copied.
	KernelReduce
	// KernelFused is SparseAttentionFused (falls back to KernelEinsum where the backend has no fused
	// attention).
	KernelFused
	// KernelPaged is SparseAttentionPaged, the fused Triton kernel (falls back to KernelEinsum where there
	// is none). KernelAuto uses it as Paged says.
	KernelPaged
)

// FusedMinQueries is the number of query rows per KV head from which KernelAuto uses the fused
// attention: a decode step's few rows leave most of the GPU idle in a flash kernel (one block per head).
const FusedMinQueries = 64

// Attend is Squeezed Attention for one layer and step: qg [H, M, D] attends to the fixed context ctxK,
// ctxV [H, S, D] read sparsely (Select's kept keys), merged by log-sum-exp with dyn, the attention of the
// same queries over the dynamic segment (user input and generated tokens; computed by the caller with
// DenseAttention and its mask, or CausalAttentionFused; a zero Partial when there is none). With every
// key kept it equals DenseAttention over both segments. With ix.Means set, the dropped keys are attended
// approximately through their clusters (RemainderAttention).
func Attend(qg, ctxK, ctxV *Node, dyn Partial, ix LayerIndex, scale float64, kernel Kernel) Partial {
	sparse, _ := AttendSelected(qg, ctxK, ctxV, ix, scale, kernel)
	if dyn.Out == nil {
		return sparse
	}
	return Merge(sparse, dyn)
}

// AttendKept attends qg [H, M, D] to the rows idx/valid/kept (from Select) of keys and values [H, S, D]
// with the given kernel.
func AttendKept(qg, keys, values, idx, valid, kept *Node, scale float64, kernel Kernel) Partial {
	m := qg.Shape().Dimensions[1]
	switch {
	case kernel == KernelReduce:
		return SparseAttentionReduce(qg, keys, values, idx, valid, scale)
	case kernel == KernelFused || (kernel == KernelAuto && m >= FusedMinQueries):
		if p, ok := SparseAttentionFused(qg, keys, values, idx, kept, scale); ok {
			return p
		}
	case kernel == KernelPaged || (kernel == KernelAuto && autoPaged(qg)):
		if p, ok := SparseAttentionPaged(qg, keys, values, idx, valid, scale); ok {
			return p
		}
	}
	return SparseAttention(qg, keys, values, idx, valid, scale)
}

// SparseAttentionReduce is SparseAttention written as element-wise products and sums over the gathered
// rows instead of batched matrix products, all in float32: for a decode step (few query rows per KV
// head) a compiler can fuse each gather into the reduction that consumes it, so the kept keys and values
// are read once from the cache and never copied.
func SparseAttentionReduce(q, keys, values, idx, valid *Node, scale float64) Partial {
	f32 := dtypes.Float32
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	b := idx.Shape().Dimensions[1]
	k := ConvertDType(GatherRows(keys, idx), f32)   // [H, B, D]
	v := ConvertDType(GatherRows(values, idx), f32) // [H, B, D]
	qf := Reshape(ConvertDType(q, f32), h, m, 1, d)
	scores := MulScalar(ReduceSum(Mul(qf, Reshape(k, h, 1, b, d)), -1), scale) // [H, M, B]
	g := q.Graph()
	mask := BroadcastToDims(Reshape(valid, h, 1, b), h, m, b)
	scores = Where(mask, scores, Scalar(g, f32, negInf))
	mx := ReduceAndKeep(scores, ReduceMax, -1) // [H, M, 1]
	e := Where(mask, Exp(Sub(scores, mx)), ZerosLike(scores))
	sum := ReduceAndKeep(e, ReduceSum, -1)
	out := ReduceSum(Mul(Reshape(e, h, m, b, 1), Reshape(v, h, 1, b, d)), 2) // [H, M, D]
	out = Div(out, MaxScalar(sum, 1e-30))
	seen := GreaterThan(sum, ZerosLike(sum))
	lse := Where(seen, Add(mx, Log(MaxScalar(sum, 1e-30))), Scalar(g, f32, negInf))
	return Partial{Out: out, LSE: lse}
}
