package squeeze

import (
	"cmp"
	"fmt"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// The lookup kernel: on a GPU, a decode step's cluster scores and the selection's boundary in one Triton kernel
// (selection kernel A with the scores folded in), after XLA's product of the queries with the centroids.
//
// Without it a decode step's lookup is seven kernels: the logits (XLA's dot), XLA's log-softmax and mean over the
// query rows (two kernels), two pads to Kp (the bits and counts, the starts), kernel A and kernel B. Session 14's
// CUPTI timeline of the attention benchmark (H200, LLaMA-2-7B shape, 32K, decode) gave them 5.2, 3.7 + 1.4,
// 1.5 + 1.6, 6.9 and 4.7 µs.
//
// Kernel S, one program per KV head (kernels/select_s_k{Kp}.cfg.gz; 4 warps below Kp = 2,048, 8 from there): reads
// the step's logits [H·M·K] float32 (XLA's product, unscaled: the kernel multiplies them by the attention scale, so
// XLA writes no scaled copy), the counts [H·K] float32 and the starts [H·K] int32 as XLA leaves them (masked loads, no
// pads). For each query row it takes the count-weighted log-sum-exp over the head's clusters, and it sums
// exp(logit − logZ) over the rows (0 for an empty cluster), divided by M: ClusterScores. Then it takes the scores'
// float bits (ScoreBits). In calibrated mode (prm[3] = 1) it gives no weight to the clusters at or below the
// threshold (aboveThreshold). Then kernel A's bisection and taken keys follow. Operands logits, counts, starts,
// fprm [threshold, scale] float32, prm [budget, K, M, mode] int32. Outputs ends, w [H·Kp], total [H] (kernel A's)
// and the starts padded to Kp [H·Kp] int32, which kernel B reads. Written in Pallas (scripts/gpu/pallas_lookup.py,
// round 22), checked there against the jnp twin of this package's XLA lookup on 14 cases. The cases cover 1-8 rows,
// K up to 13,107, empty and duplicated clusters (exact ties) and the threshold mode.
//
// It serves steps of at most LookupMaxQueries query rows a KV head with a flat index in budget or calibrated mode
// (not the attention-mass mode, not with the remainder, whose lookup keeps the log-probabilities).

// LookupMaxQueries is the most query rows per KV head for which a step's lookup runs in the lookup kernel (it
// walks the rows one after the other).
const LookupMaxQueries = PagedMaxQueries

// LookupAutoMaxWork is the most query rows × padded clusters (M·Kp) of a step for which SelectAuto takes the lookup
// kernel: each program walks its head's M rows of Kp logits one after the other. Measured on an H200 (session 15,
// CUPTI timelines of the attention benchmark's decode, call 6): the kernel took 10.0 µs (LLaMA-2-7B shape, 32K, M =
// 1, Kp = 2,048), 12.9 (LLaMA-3-8B, 32K, M = 4), 20.3 (7B, 128K, Kp = 8,192) and 26.2 (8B, 128K, M = 4). In the
// benchmark's totals (call 7, two processes, µs a layer) the step with it against XLA's scores and kernel A was
// faster at the first three shapes (7B 32K 40.2 / 37.4 against 45.5 / 43.3, 8B 32K 40.2 / 39.5 against 42.1 / 41.8,
// 7B 128K 111.1 / 114.0 against 114.7 / 116.7) and slower at the fourth (90.7 / 86.0 against 87.5 / 81.1).
const LookupAutoMaxWork = 8192

// LookupKernel is when a step's cluster scores and boundary run in the lookup kernel (SelectMode's values:
// SelectAuto on a backend that passed ProbeLookup); the engine sets it from SQLLM_SQUEEZE_LOOKUP.
var LookupKernel SelectMode

// lookupProbed holds ProbeLookup's result per backend (compute.Backend → bool).
var lookupProbed sync.Map

// lookupConfig is the embedded config of the lookup kernel for k clusters ("" where there is none).
func lookupConfig(k int) string {
	kp := selectKp(k)
	if kp == 0 {
		return ""
	}
	return kernelConfig(fmt.Sprintf("kernels/select_s_k%d.cfg.gz", kp))
}

// useLookupKernel says whether a step of queries qg [H, M, D] looks up index ix (flat) through the lookup kernel
// and kernel B: at most LookupMaxQueries rows, no remainder, not the attention-mass mode, the mode saying
// (ix.Lookup; SelectAuto: LookupKernel, the backend having passed ProbeLookup), and the selection kernels taken
// (useSelectKernels); under SelectAuto at most LookupAutoMaxWork rows × padded clusters.
func useLookupKernel(qg *Node, ix LayerIndex) bool {
	k := ix.Centroids.Shape().Dimensions[1]
	m := qg.Shape().Dimensions[1]
	if ix.CoarseCentroids != nil || ix.Means != nil || ix.Mass || m > LookupMaxQueries || lookupConfig(k) == "" {
		return false
	}
	mode := cmp.Or(ix.Lookup, LookupKernel)
	if mode == SelectAuto && m*selectKp(k) > LookupAutoMaxWork {
		return false
	}
	g := qg.Graph()
	return kernelsWanted(g, mode, LookupKernel, &lookupProbed) && useSelectKernels(g, k, ix.Order == nil, ix.Select)
}

// LookupFor says whether decode steps of m query rows per KV head on backend b, with a flat index of k clusters
// without the remainder in budget or calibrated mode, look up through the lookup kernel (under SelectAuto it runs
// ProbeLookup once).
func LookupFor(b compute.Backend, m, k int) bool {
	if m > LookupMaxQueries || lookupConfig(k) == "" || (LookupKernel == SelectAuto && m*selectKp(k) > LookupAutoMaxWork) {
		return false
	}
	return SelectFor(b, k) && kernelsFor(b, LookupKernel, ProbeLookup)
}

// lookupKernelList is selectKernelList from the step's logits [H, M, K] float32 (centroidLogits; the kernel
// multiplies them by scale) and counts [H, K] (float32, as the index keeps them) instead of the scores' bits: the
// budget keys of the best clusters (ClusterScores), then the window, as gidx [H·bp] int32, kept [H] and taken
// [H, K] int32. threshold (a scalar, or nil in budget mode) gives no weight to the clusters at or below it.
func lookupKernelList(logits *Node, scale float64, counts, starts, order, threshold, budget, clustered, window *Node, b, s, bp int) (gidx, kept, taken *Node) {
	g := logits.Graph()
	i32, f32 := dtypes.Int32, dtypes.Float32
	h, m, k := logits.Shape().Dimensions[0], logits.Shape().Dimensions[1], logits.Shape().Dimensions[2]
	kp := selectKp(k)
	cfgS := lookupConfig(k)
	_, cfgB := selectConfigs(k, order == nil)
	if cfgS == "" || cfgB == "" || bp%selectSlots != 0 || bp < b {
		exceptions.Panicf("squeeze: no lookup kernel for K=%d (list %d in %d slots)", k, b, bp)
	}
	scalar := func(x *Node) *Node { return Reshape(ConvertDType(x, i32), 1) }
	mode, thr := int32(0), Const(g, []float32{0})
	if threshold != nil {
		mode, thr = 1, Reshape(ConvertDType(threshold, f32), 1)
	}
	fprm := Concatenate([]*Node{thr, Const(g, []float32{float32(scale)})}, 0) // [threshold, scale]
	prm := Concatenate([]*Node{scalar(budget), Const(g, []int32{int32(k), int32(m), mode})}, 0)
	out := selectCall(cfgS, h, []*Node{Reshape(ConvertDType(logits, f32), h*m*k), Reshape(ConvertDType(counts, f32), h*k),
		Reshape(ConvertDType(starts, i32), h*k), fprm, prm},
		[]shapes.Shape{shapes.Make(i32, h*kp), shapes.Make(i32, h*kp), shapes.Make(i32, h), shapes.Make(i32, h*kp)})
	ends, w, total, startsP := out[0], out[1], out[2], out[3]
	gidx = selectListB(cfgB, ends, w, startsP, total, order, clustered, window, h, b, s, bp)
	kept, taken = keptTaken(total, w, window, k, b)
	return gidx, kept, taken
}

// ProbeLookup compiles and runs small cases through the lookup kernel and kernel B on b, once per backend, and says
// whether they gave the lists, kept and taken counts of XLA's lookup (ClusterScores, selectKeys; lists as sets), in
// budget and calibrated mode, for 1 and 4 query rows a head, both layouts. On a backend without custom calls it is
// false at once.
func ProbeLookup(b compute.Backend) bool { return probeOnce(&lookupProbed, b, probeLookup) }

func probeLookup(b compute.Backend) (ok bool) {
	const h, s, k, d, window, list = 3, 700, 40, 16, 12, 330
	err := exceptions.TryCatch[error](func() {
		out := MustExecOnceN(b, func(g *Graph) []*Node {
			if !pagedAvailable(g) {
				return []*Node{Const(g, int32(-1))}
			}
			i32, f32 := dtypes.Int32, dtypes.Float32
			clustered := s - window - 8 // 8 padding rows
			pos := Iota(g, shapes.Make(i32, h, s), 1)
			labels := ModScalar(Add(MulScalar(pos, 7), MulScalar(Iota(g, shapes.Make(i32, h, s), 0), 3)), k)
			// Clusters ≡ 1 (mod 5) empty: their keys go to the cluster before.
			labels = Where(Equal(ModScalar(labels, 5), OnesLike(labels)), AddScalar(labels, -1), labels)
			counts := ReduceSum(ConvertDType(Equal(
				BroadcastToDims(Reshape(Where(LessThan(pos, Scalar(g, i32, clustered)), labels, Scalar(g, i32, k)), h, s, 1), h, s, k),
				Iota(g, shapes.Make(i32, h, s, k), 2)), i32), 1) // [H, K]
			countsF := ConvertDType(counts, f32)
			order, starts := ClusterOrder(labels, counts, Scalar(g, i32, clustered))
			// Centroids and queries from a fixed pattern; clusters 4j+3 repeat cluster 4j+2 (exact ties).
			c := Iota(g, shapes.Make(i32, h, k, d), 1)
			c = Where(Equal(ModScalar(c, 4), Scalar(g, i32, 3)), AddScalar(c, -1), c)
			cent := MulScalar(Sin(ConvertDType(Add(MulScalar(c, 13), Add(MulScalar(Iota(g, shapes.Make(i32, h, k, d), 2), 7),
				Iota(g, shapes.Make(i32, h, k, d), 0))), f32)), 2)
			diff := Scalar(g, i32, 0)
			for _, m := range []int{1, 4} {
				q := Cos(ConvertDType(Add(MulScalar(Iota(g, shapes.Make(i32, h, m, d), 2), 5), MulScalar(Iota(g, shapes.Make(i32, h, m, d), 1), 11)), f32))
				logits := centroidLogits(q, cent)
				scores := ClusterScores(q, cent, countsF, 0.5)
				for _, thr := range []*Node{nil, Scalar(g, f32, 0.02)} {
					n := counts
					if thr != nil {
						n = Where(aboveThreshold(scores, thr), counts, ZerosLike(counts))
					}
					for _, budget := range []int{150, 5000} {
						for _, ord := range []*Node{order, nil} {
							bud, cl, win := Scalar(g, i32, budget), Scalar(g, i32, clustered), Scalar(g, i32, window)
							idx, valid, kept, taken := selectKeys(scores, n, starts, ord, bud, cl, win, list, SearchPasses)
							gidx, kk, tk := lookupKernelList(logits, 0.5, countsF, starts, ord, thr, bud, cl, win, list, s, 512)
							diff = Add(diff, selectionDiff(idx, valid, kept, taken, gidx, kk, tk, s))
						}
					}
				}
			}
			return []*Node{diff}
		})
		ok = out[0].Value().(int32) == 0
	})
	return err == nil && ok
}
