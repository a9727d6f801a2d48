// Package squeeze implements Squeezed Attention (Hooper et al., 2024) as GoMLX graph functions,
// independent of any model: k-means clustering of a fixed context's keys (per KV head), the centroid
// lookup that estimates each cluster's attention probability for a query, threshold calibration and
// fixed-budget selection, compaction of the kept keys into static-size index lists, sparse attention over
// the gathered keys, and the log-sum-exp merge with the dense attention over the user's own tokens.
// DenseAttention is the reference path and the test oracle: with every key kept, the squeezed path
// equals it.
//
// The online path for a step is Attend (attention.go): Select (centroid lookup, then SelectKeys: the
// budget chosen among the K clusters by a count-weighted search and expanded to the kept keys' index list
// slot by slot through the cluster-sorted key order of ClusterOrder, with no pass over all S keys), then
// a sparse kernel (gathered einsum, fusable multiply-reduce, or the backend's fused flash attention) and
// the merge. BudgetMaskN/KeyScores/Compact are the per-key selection it replaces, kept as its oracle.
//
// The hierarchical index (hier.go: KMeansHierarchical, HierarchicalScores) adds a coarse level of
// centroids of the centroids: a step scores the coarse centroids, then only the fine centroids under the
// best coarse clusters (a static number of slots), and selects among those; the reference code only
// simulated this by scoring every fine centroid.
//
// Shapes use: numKVHeads H, fixed-context keys S, head dim D, centroids K, queries M (for one KV head,
// its group's query heads × query tokens, flattened), kept-key budget B.
//
// Differences from the reference code (see ../shared/docs/SQUEEZED_ATTENTION.md):
//   - scores are computed in the log domain with the maximum subtracted (no NaN thresholds), and empty
//     clusters get probability 0 (weight 0 in the normaliser), never a zero centroid that attracts queries;
//   - grouped-query attention: the selection of a KV head aggregates the scores of all its query heads;
//   - k-means is initialised with evenly spaced keys (deterministic, parallel) instead of k-means++, and runs
//     a fixed number of Lloyd iterations on the device.
package squeeze

import (
	"math"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
)

// negInf stands for log(0): exp underflows to exactly 0 in float32 without producing NaN in sums.
const negInf = -1e30

// KMeans clusters keys [H, S, D] into k clusters per head: cosine assignment on L2-normalised keys,
// iters Lloyd iterations, then each centroid is the mean of its cluster's raw (un-normalised) keys.
// It returns centroids [H, K, D] (float32; zero for empty clusters), labels [H, S] int32 and counts [H, K]
// float32 (0 marks an empty cluster).
func KMeans(keys *Node, k, iters int) (centroids, labels, counts *Node) {
	return KMeansMasked(keys, nil, k, iters)
}

// KMeansMasked is KMeans over the first `clustered` keys only (a scalar int32 node; nil = all): the
// rest are padding and belong to no cluster (their labels are meaningless). Shapes stay static, so
// contexts of different lengths in one capacity bucket share one executable.
//
// Half-precision keys on an accelerator take the fast path: the similarities and the cluster sums are
// half-precision matrix products with float32 results (exact one-hot weights, float32 accumulation; the
// unit vectors are rounded to the keys' dtype), deterministic (no atomics). Float32 keys, or the pure-Go
// backend, compute in float32.
func KMeansMasked(keys, clustered *Node, k, iters int) (centroids, labels, counts *Node) {
	g := keys.Graph()
	h, s, d := keys.Shape().Dimensions[0], keys.Shape().Dimensions[1], keys.Shape().Dimensions[2]
	n := clustered
	if n == nil {
		n = Scalar(g, dtypes.Int32, s)
	}
	f32 := dtypes.Float32
	mm := f32 // the dtype of the matrix products' operands
	if keys.DType().IsHalfPrecision() && (g.Backend().String() != "go" || testHalfKMeans) {
		mm = keys.DType()
	}
	raw := ConvertDType(keys, f32)
	unit := L2NormalizeWithEpsilon(raw, 1e-12, -1) // [H, S, D]
	unitMM := ConvertDType(unit, mm)
	rowValid := ConvertDType(LessThan(Iota(g, shapes.Make(dtypes.Int32, 1, s, 1), 1),
		BroadcastToDims(n, 1, s, 1)), mm) // [1, S, 1]
	ones := ConvertDType(BroadcastToDims(Reshape(rowValid, 1, s), h, s), mm) // [H, S]: 1 for clustered keys

	// Initial centroids: k keys spread evenly over the clustered part (key ⌊j·n/K⌋ seeds cluster j).
	seed := Div(Mul(Iota(g, shapes.Make(dtypes.Int32, h, k), 1), BroadcastToDims(n, h, k)), Scalar(g, dtypes.Int32, k))
	cent := GatherRows(unit, seed) // [H, K, D]

	var onehot *Node
	assign := func(c *Node) {
		cn := ConvertDType(L2NormalizeWithEpsilon(c, 1e-12, -1), mm)
		sim := productF32(unitMM, cn, [][2]int{{2, 2}}, [][2]int{{0, 0}})     // [H, S, K] cosine similarity
		labels = ArgMax(sim, -1, dtypes.Int32)                                // [H, S]
		onehot = Mul(OneHot(labels, k, mm), rowValid)                         // [H, S, K]; padding in no cluster
		counts = productF32(onehot, ones, [][2]int{{1, 1}}, [][2]int{{0, 0}}) // [H, K]
	}
	for range iters {
		assign(cent)
		sums := productF32(onehot, unitMM, [][2]int{{1, 1}}, [][2]int{{0, 0}}) // [H, K, D]
		mean := Div(sums, ExpandAxes(MaxScalar(counts, 1), -1))
		// An empty cluster keeps its previous centroid (it may win keys back later).
		nonEmpty := BroadcastToDims(ExpandAxes(GreaterThan(counts, ZerosLike(counts)), -1), h, k, d)
		cent = Where(nonEmpty, mean, cent)
	}
	assign(cent)
	sums := productF32(onehot, ConvertDType(keys, mm), [][2]int{{1, 1}}, [][2]int{{0, 0}})
	centroids = Div(sums, ExpandAxes(MaxScalar(counts, 1), -1))
	return centroids, labels, counts
}

// ClusterMeans is each cluster's mean value [H, K, D] (in values' dtype; zero for an empty cluster), for
// RemainderAttention: values [H, S, D] are the rows of keys whose first `clustered` (a scalar int32)
// carry labels [H, S] int32 and counts [H, K] as KMeansMasked returns them; the other rows belong to no
// cluster. A one-hot product like KMeansMasked's cluster sums (half precision with float32 accumulation
// on an accelerator), deterministic: an index loaded from storage gets the same means.
func ClusterMeans(values, labels, counts, clustered *Node) *Node {
	g := values.Graph()
	s := values.Shape().Dimensions[1]
	k := counts.Shape().Dimensions[1]
	mm := dtypes.Float32
	if values.DType().IsHalfPrecision() && (g.Backend().String() != "go" || testHalfKMeans) {
		mm = values.DType()
	}
	rowValid := ConvertDType(LessThan(Iota(g, shapes.Make(dtypes.Int32, 1, s, 1), 1),
		BroadcastToDims(ConvertDType(clustered, dtypes.Int32), 1, s, 1)), mm) // [1, S, 1]
	onehot := Mul(OneHot(ConvertDType(labels, dtypes.Int32), k, mm), rowValid)               // [H, S, K]
	sums := productF32(onehot, ConvertDType(values, mm), [][2]int{{1, 1}}, [][2]int{{0, 0}}) // [H, K, D]
	means := Div(sums, ExpandAxes(MaxScalar(ConvertDType(counts, dtypes.Float32), 1), -1))
	return ConvertDType(means, values.DType())
}

// testHalfKMeans makes tests take KMeansMasked's half-precision path on the pure-Go backend.
var testHalfKMeans bool

// LogClusterProb returns log p_c(q) for queries q [H, M, D] against centroids [H, K, D] with counts
// [H, K]: p_c(q) = exp(q·C_c·scale) / Σ_j N_j exp(q·C_j·scale), the estimated attention probability of
// one key of cluster c. Computed with the maximum subtracted; empty clusters get log p = -1e30. [H, M, K].
//
// With q and centroids both in a half-precision dtype (bfloat16 centroids are half the bytes to read per
// lookup), the logits come from a half-precision product, as the engine's own attention scores do; else
// the product is float32.
func LogClusterProb(q, centroids, counts *Node, scale float64) *Node {
	logP, _ := logClusterProbZ(q, centroids, counts, scale)
	return logP
}

// logClusterProbZ is LogClusterProb and its normaliser log Z = log Σ_j N_j exp(q·C_j·scale) [H, M, 1].
func logClusterProbZ(q, centroids, counts *Node, scale float64) (logP, logZ *Node) {
	logits := MulScalar(centroidLogits(q, centroids), scale) // [H, M, K] float32
	weighted, nonEmpty := weightedLogits(logits, counts)     // [H, M, K]: log N_c + logit
	logZ = logSumExp(weighted, -1)                           // [H, M, 1]
	return Where(nonEmpty, Sub(logits, logZ), Scalar(q.Graph(), dtypes.Float32, negInf)), logZ
}

// logSumExp over one axis, kept as a size-1 axis, stable for huge or masked (-1e30) values.
func logSumExp(x *Node, axis int) *Node {
	m := StopGradient(ReduceAndKeep(x, ReduceMax, axis))
	return Add(m, Log(ReduceAndKeep(Exp(Sub(x, m)), ReduceSum, axis)))
}

// ClusterScores is each cluster's mean estimated probability over the queries: [H, K]. For a user input
// this is one selection per KV head for the whole input (as the reference); for a decode step M is the
// group's query heads of one token.
func ClusterScores(q, centroids, counts *Node, scale float64) *Node {
	return ReduceMean(Exp(LogClusterProb(q, centroids, counts, scale)), 1)
}

// clusterScoresFromLogits is ClusterScores from the scaled logits [H, M, K] float32 (MulScalar(centroidLogits(q,
// centroids), scale)) and counts [H, K]: what the lookup kernel computes.
func clusterScoresFromLogits(logits, counts *Node) *Node {
	weighted, nonEmpty := weightedLogits(logits, counts)
	logP := Where(nonEmpty, Sub(logits, logSumExp(weighted, -1)), Scalar(logits.Graph(), dtypes.Float32, negInf))
	return ReduceMean(Exp(logP), 1)
}

// KeyScores gives every key its cluster's score: scores [H, K], labels [H, S] → [H, S].
func KeyScores(scores, labels *Node) *Node {
	g := scores.Graph()
	h, s := labels.Shape().Dimensions[0], labels.Shape().Dimensions[1]
	heads := Iota(g, shapes.Make(dtypes.Int32, h, s, 1), 0)
	return Gather(scores, Concatenate([]*Node{heads, ExpandAxes(labels, -1)}, -1)) // [H, S]
}

// ThresholdMask keeps the keys whose score exceeds the threshold (a scalar): [H, S] bool.
func ThresholdMask(keyScores, threshold *Node) *Node {
	return GreaterThan(keyScores, BroadcastToDims(threshold, keyScores.Shape().Dimensions...))
}

// BudgetMask keeps, per head, the budget keys with the highest scores (scores must be ≥ 0, as
// probabilities are; ties broken by position): [H, S] bool. It needs no sort: the budget-th largest score
// is found by bisection on the float's bits (monotonic for non-negative floats), 31 masked counts.
func BudgetMask(keyScores *Node, budget int) *Node {
	if budget >= keyScores.Shape().Dimensions[1] {
		return ConvertDType(OnesLike(keyScores), dtypes.Bool)
	}
	return BudgetMaskN(keyScores, Scalar(keyScores.Graph(), dtypes.Int32, budget))
}

// BudgetMaskN is BudgetMask with the budget given as a scalar int32 node (so it can vary without
// recompiling). A budget at least the number of keys keeps them all.
func BudgetMaskN(keyScores, budget *Node) *Node {
	g := keyScores.Graph()
	h, s := keyScores.Shape().Dimensions[0], keyScores.Shape().Dimensions[1]
	bits := Bitcast(MaxScalar(ConvertDType(keyScores, dtypes.Float32), 0), dtypes.Int32) // [H, S]
	b := budget
	lo := Zeros(g, shapes.Make(dtypes.Int32, h, 1))                  // count(bits >= lo) >= budget holds
	hi := BroadcastToDims(Scalar(g, dtypes.Int32, 0x7f800001), h, 1) // count(bits >= hi) < budget holds
	for range 31 {
		mid := Add(lo, DivScalar(Sub(hi, lo), 2))
		n := ReduceAndKeep(ConvertDType(GreaterOrEqual(bits, mid), dtypes.Int32), ReduceSum, 1)
		ok := GreaterOrEqual(n, b)
		lo, hi = Where(ok, mid, lo), Where(ok, hi, mid)
	}
	// lo is the budget-th largest value: keep everything above it, then ties in position order.
	strict := GreaterThan(bits, lo)
	ties := Equal(bits, BroadcastToDims(lo, h, s))
	room := Sub(b, ReduceAndKeep(ConvertDType(strict, dtypes.Int32), ReduceSum, 1)) // [H, 1]
	tieRank := CumSum(ConvertDType(ties, dtypes.Int32), 1)
	return Or(strict, And(ties, LessOrEqual(tieRank, BroadcastToDims(room, h, s))))
}

// ScatterMask turns per-head index lists [H, B] into a mask [H, S].
func ScatterMask(idx *Node, s int) *Node {
	g := idx.Graph()
	h, b := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
	heads := Iota(g, shapes.Make(dtypes.Int32, h, b, 1), 0)
	at := Concatenate([]*Node{heads, ExpandAxes(ConvertDType(idx, dtypes.Int32), -1)}, -1) // [H, B, 2]
	ones := Ones(g, shapes.Make(dtypes.Float32, h, b))
	marks := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, h, s)), at, ones, false, false)
	return GreaterThan(marks, ZerosLike(marks))
}

// Compact lists the kept keys of mask [H, S] in position order in a static-size list of b slots:
// idx [H, B] int32 (0 in unused slots) and valid [H, B] bool. Keys beyond b are dropped (size b with a
// bucket of at least the kept count). kept [H] int32 is the number of kept keys per head before dropping.
func Compact(mask *Node, b int) (idx, valid, kept *Node) {
	g := mask.Graph()
	h, s := mask.Shape().Dimensions[0], mask.Shape().Dimensions[1]
	m := ConvertDType(mask, dtypes.Int32)
	slot := Sub(CumSum(m, 1), Ones(g, shapes.Make(dtypes.Int32, h, s))) // [H, S]: slot of each kept key
	use := And(mask, LessThan(slot, Scalar(g, dtypes.Int32, b)))
	slot = Clamp(Scalar(g, dtypes.Int32, 0), slot, Scalar(g, dtypes.Int32, b-1))
	heads := Iota(g, shapes.Make(dtypes.Int32, h, s, 1), 0)
	at := Concatenate([]*Node{heads, ExpandAxes(slot, -1)}, -1) // [H, S, 2]
	pos1 := Add(Iota(g, shapes.Make(dtypes.Int32, h, s), 1), Ones(g, shapes.Make(dtypes.Int32, h, s)))
	upd := Where(use, pos1, ZerosLike(pos1))                                             // position+1 of used keys
	list := ScatterSum(Zeros(g, shapes.Make(dtypes.Int32, h, b)), at, upd, false, false) // [H, B]
	valid = GreaterThan(list, ZerosLike(list))
	idx = MaxScalar(Sub(list, OnesLike(list)), 0)
	kept = ReduceSum(m, 1)
	return idx, valid, kept
}

// GatherRows gathers rows idx [H, B] of x [H, S, D]: [H, B, D].
func GatherRows(x, idx *Node) *Node {
	g := x.Graph()
	h, b := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
	heads := Iota(g, shapes.Make(dtypes.Int32, h, b, 1), 0)
	return Gather(x, Concatenate([]*Node{heads, ExpandAxes(ConvertDType(idx, dtypes.Int32), -1)}, -1))
}

// Partial is an attention result over a subset of the keys, with the log-sum-exp of its scores, so that
// results over disjoint key sets merge exactly.
type Partial struct {
	Out *Node // [H, M, D] float32
	LSE *Node // [H, M, 1] float32; -1e30 when no key was visible
}

// DenseAttention is exact attention of q [H, M, D] over keys and values [H, S, D], where mask [H, M, S]
// (or broadcastable [H, 1, S] / [1, M, S]) says which keys each query sees (nil = all).
// With q, keys and values all in a half-precision dtype the two products run in it (scores and the
// probabilities that weight the values are rounded to it, as the engine's dense attention does; the
// softmax is float32); otherwise everything is float32.
func DenseAttention(q, keys, values, mask *Node, scale float64) Partial {
	scores := MulScalar(product("hmd,hsd->hms", q, keys), scale) // [H, M, S] float32
	return softmaxPartial(scores, mask, values)
}

// SparseAttention is exact attention of q [H, M, D] over the keys listed in idx/valid [H, B] (from
// Compact) of keys and values [H, S, D]: it reads only B rows per head.
func SparseAttention(q, keys, values, idx, valid *Node, scale float64) Partial {
	k := GatherRows(keys, idx)   // [H, B, D]
	v := GatherRows(values, idx) // [H, B, D]
	m := q.Shape().Dimensions[1]
	mask := BroadcastToDims(ExpandAxes(valid, 1), valid.Shape().Dimensions[0], m, valid.Shape().Dimensions[1])
	return DenseAttention(q, k, v, mask, scale)
}

func softmaxPartial(scores, mask, values *Node) Partial {
	g := scores.Graph()
	if mask != nil {
		mask = BroadcastToDims(mask, scores.Shape().Dimensions...)
		scores = Where(mask, scores, Scalar(g, dtypes.Float32, negInf))
	}
	mx := ReduceAndKeep(scores, ReduceMax, -1) // [H, M, 1]
	e := Exp(Sub(scores, mx))
	if mask != nil {
		e = Where(mask, e, ZerosLike(e)) // a fully masked row sums to 0, not to S
	}
	sum := ReduceAndKeep(e, ReduceSum, -1)
	var out *Node
	chunk := splitChunk(g, scores.Shape().Dimensions[1], scores.Shape().Dimensions[2])
	switch {
	case values.DType().IsHalfPrecision() && chunk > 0:
		// Normalise before rounding the weights to the half dtype, as a softmax in the engine does.
		out = SplitKValues(ConvertDType(Div(e, MaxScalar(sum, 1e-30)), values.DType()), values, chunk)
	case values.DType().IsHalfPrecision():
		out = product("hms,hsd->hmd", ConvertDType(Div(e, MaxScalar(sum, 1e-30)), values.DType()), values)
	case chunk > 0:
		out = Div(SplitKValues(e, values, chunk), MaxScalar(sum, 1e-30))
	default:
		out = Div(product("hms,hsd->hmd", e, values), MaxScalar(sum, 1e-30))
	}
	seen := GreaterThan(sum, ZerosLike(sum))
	lse := Where(seen, Add(mx, Log(MaxScalar(sum, 1e-30))), Scalar(g, dtypes.Float32, negInf))
	return Partial{Out: out, LSE: lse}
}

// SplitKValues is probs [H, M, S] · values [H, S, D] → [H, M, D] float32, computed as float32 partial
// sums over chunks of `chunk` keys (S a multiple of it), then their sum. Written as one product, XLA on the
// GPU reduces each head's S keys in one thread block when M is small (a decode step), so only H blocks
// run: on an H100 that kernel read the values at 1.6 TB/s (LLaMA-2-7B shape, 4K context), and a squeezed
// step's product over its kept keys took 29 µs a layer on 32 blocks (scripts/gpu/trace_squeeze.sh).
// Half-precision operands are multiplied with float32 accumulation (productF32).
func SplitKValues(probs, values *Node, chunk int) *Node {
	h, m, s := probs.Shape().Dimensions[0], probs.Shape().Dimensions[1], probs.Shape().Dimensions[2]
	d := values.Shape().Dimensions[2]
	c := s / chunk
	p := TransposeAllAxes(Reshape(probs, h, m, c, chunk), 0, 2, 1, 3)    // [H, C, M, chunk]
	v := Reshape(values, h, c, chunk, d)                                 // [H, C, chunk, D]
	part := productF32(p, v, [][2]int{{3, 2}}, [][2]int{{0, 0}, {1, 1}}) // [H, C, M, D]
	return ReduceSum(part, 1)
}

// splitChunk is the chunk of SplitKValues for attention of m query rows per head over s keys: on an
// accelerator, for a few rows (a decode step) over at least 1024 keys, the largest of 256, 128 and 64
// that divides s; 0 (one product) otherwise, on the pure-Go backend (unless TestSplitK), or with
// NoSplitK set.
func splitChunk(g *Graph, m, s int) int {
	if NoSplitK || m > 16 || s < 1024 || (g.Backend().String() == "go" && !TestSplitK) {
		return 0
	}
	for _, c := range []int{256, 128, 64} {
		if s%c == 0 {
			return c
		}
	}
	return 0
}

// NoSplitK turns SplitKValues off in attention (one product instead), for measuring what it gains; the
// engine sets it from SQLLM_NO_SPLITK. TestSplitK makes the pure-Go backend use it too (tests).
var NoSplitK, TestSplitK bool

// Merge combines attention over two disjoint key sets into attention over their union.
func Merge(a, b Partial) Partial {
	m := Max(a.LSE, b.LSE)
	wa, wb := Exp(Sub(a.LSE, m)), Exp(Sub(b.LSE, m))
	sum := MaxScalar(Add(wa, wb), 1e-30)
	out := Div(Add(Mul(a.Out, wa), Mul(b.Out, wb)), sum)
	return Partial{Out: out, LSE: Add(m, Log(sum))}
}

// product is Einsum with a float32 result. When both operands share a half-precision dtype it multiplies
// in it (accumulating in float32 on the device, as the engine's attention does); otherwise in float32.
// On the pure-Go backend half-precision operands are multiplied in float32 and rounded back (GoMLX
// compute v0.1.6's bfloat16 matmul kernels are wrong for batched products).
func product(equation string, a, b *Node) *Node {
	f32 := dtypes.Float32
	if a.DType() != b.DType() || !a.DType().IsHalfPrecision() {
		return Einsum(equation, ConvertDType(a, f32), ConvertDType(b, f32))
	}
	if a.Graph().Backend().String() == "go" {
		return ConvertDType(ConvertDType(Einsum(equation, ConvertDType(a, f32), ConvertDType(b, f32)), a.DType()), f32)
	}
	return ConvertDType(Einsum(equation, a, b), f32)
}

// centroidLogits are the products q·c of queries q [H, M, D] and centroids c [H, K, D]: [H, M, K] float32,
// accumulated in float32 whatever the operands' dtype (half-precision operands of one dtype use the device's
// half-precision products; the centroids are bfloat16 values, so that is exact for bfloat16 queries).
func centroidLogits(q, c *Node) *Node {
	return productF32(q, c, [][2]int{{2, 2}}, [][2]int{{0, 0}})
}

// productF32 is EinsumAxes (output axes: batch, then a's free axes, then b's) with float32 operands, or
// with half-precision operands (both of one dtype) and a float32 result accumulated in float32 — the
// precision of a float32 product of the rounded operands. The pure-Go backend multiplies half-precision
// operands in float32. (Einsum would drop the output dtype: it rebuilds its DotGeneral.)
func productF32(a, b *Node, contracting, batch [][2]int) *Node {
	f32 := dtypes.Float32
	if a.DType() != b.DType() || !a.DType().IsHalfPrecision() || a.Graph().Backend().String() == "go" {
		return EinsumAxes(ConvertDType(a, f32), ConvertDType(b, f32), contracting, batch)
	}
	return Dot(a, b).WithAccumulatorDType(f32).WithOutputDType(f32).EinsumAxes(contracting, batch)
}

// Scale is the attention scale 1/√D.
func Scale(headDim int) float64 { return 1 / math.Sqrt(float64(headDim)) }
