package squeeze

import (
	"fmt"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// The selection kernels: on a GPU, the budget selection (the boundary among a head's clusters and the kept
// keys' index list, selectKeys) runs as two Triton kernels instead of about ten XLA kernels a layer.
//
//   - Kernel A, one program per KV head: the boundary lo over the head's cluster-score bits by bisection (31
//     passes over the head's Kp clusters in registers), then each cluster's taken keys w (all of a cluster
//     above lo; of the clusters tied at lo, keys in cluster order until the budget) and their inclusive
//     running sum ends. Operands bits, counts [H·Kp] int32 (padding clusters: 0, 0), prm [budget, 0] int32;
//     outputs ends, w [H·Kp], total [H] int32.
//   - Kernel B, one program per 256 slots of a head's list: each slot's cluster by a binary search over the
//     head's ends, then its row (the cluster's first slot in the cluster order starts + the offset, through
//     order unless the keys are stored sorted), the window's rows after the clusters' keys, -1 past the kept
//     slots. Operands ends, w, starts [H·Kp], total [H], order [H·S] (a dummy [1] for the sorted layout), prm
//     [S, clustered, window, B, Bp, NT, 0, 0] int32; output gidx [H·Bp] int32: h·S + row, the paged kernel's
//     list format, which SparseAttentionPaged's kernel reads as it is.
//
// The list is in cluster order (selectKeys lists the clusters above the boundary first, then the tied ones):
// the same keys. Written in Pallas (scripts/gpu/pallas_select.py, round 7) and exported as the Triton call's
// backend_config (kernels/select_a_k{Kp}.cfg.gz, select_b_k{Kp}_{order,sorted}.cfg.gz, Kp = 256 .. 16384)
// like the paged kernels (kernels/README.md). Checked there against selectKeys' jnp twin on ties, budgets
// above the total and both layouts; measured on an H200 (session 10, 16 layers chained, order layout, 10%
// budget): 23.4 µs a layer at 32K (LLaMA-2-7B shape, K = 1,638) and 37.4 at 128K (K = 6,554), against
// 57.5 and 111.3 µs for XLA's boundary and list with command buffers (session 9).

// selectSlots is the slots per program of kernel B (R of the exported configs).
const selectSlots = 256

// selectMaxKp is the most clusters (padded to a power of two) with an embedded selection kernel.
const selectMaxKp = 16384

// SelectMode says when the selection runs in the selection kernels.
type SelectMode int

const (
	// SelectAuto: on a backend that passed ProbeSelect, for K ≤ 16,384 clusters.
	SelectAuto SelectMode = iota
	SelectOff             // never: XLA's selection (selectKeys)
	SelectOn              // wherever there is a kernel, probed or not
)

// SelectKernels is when the selection kernels run; the engine sets it from SQLLM_SQUEEZE_SELECT (1: SelectOn,
// 0: SelectOff, unset: SelectAuto).
var SelectKernels SelectMode

// selectProbed holds ProbeSelect's result per backend (compute.Backend → bool).
var selectProbed sync.Map

// selectCall emits a selection kernel's call; tests replace it with a graph emulation (emulateSelect).
var selectCall = tritonLaunch

// selectKp is the padded cluster count of a kernel for k clusters: the next power of two from 256, 0 above
// selectMaxKp.
func selectKp(k int) int {
	kp := 256
	for kp < k {
		kp *= 2
	}
	if kp > selectMaxKp {
		return 0
	}
	return kp
}

// selectConfigs are the embedded configs of kernels A and B for k clusters and the layout ("" where there
// are none).
func selectConfigs(k int, sortedLayout bool) (a, b string) {
	kp := selectKp(k)
	if kp == 0 {
		return "", ""
	}
	layout := "order"
	if sortedLayout {
		layout = "sorted"
	}
	return kernelConfig(fmt.Sprintf("kernels/select_a_k%d.cfg.gz", kp)), kernelConfig(fmt.Sprintf("kernels/select_b_k%d_%s.cfg.gz", kp, layout))
}

// useSelectKernels says whether a step graph on g selects with the kernels for k clusters in the given
// layout, the index's mode saying (mode; SelectAuto: SelectKernels; under SelectAuto the backend must have
// passed ProbeSelect already).
func useSelectKernels(g *Graph, k int, sortedLayout bool, mode SelectMode) bool {
	if !kernelsWanted(g, mode, SelectKernels, &selectProbed) {
		return false
	}
	a, b := selectConfigs(k, sortedLayout)
	return a != "" && b != ""
}

// SelectFor says whether steps on backend b select among k clusters (their kept lists indexing keys in position
// order through a cluster order) with the kernels (under SelectAuto it runs ProbeSelect once).
func SelectFor(b compute.Backend, k int) bool {
	a, kb := selectConfigs(k, false)
	return a != "" && kb != "" && kernelsFor(b, SelectKernels, ProbeSelect)
}

// selectKernelList is selectKeys' list through the kernels: the budget keys of the clusters with the highest
// bits [H, K] (ScoreBits; counts [H, K] int32), then the window, written as gidx [H·bp] int32 (h·s + row, -1
// in unused slots; bp a multiple of selectSlots, at least b), with kept [H] int32 (at most b) and taken
// [H, K] int32 (each cluster's keys in the list). s is the rows per head of the keys the list indexes; order
// [H, s] (nil: the keys are stored sorted by cluster). budget, clustered and window are scalar int32 nodes.
func selectKernelList(bits, counts, starts, order, budget, clustered, window *Node, b, s, bp int) (gidx, kept, taken *Node) {
	g := bits.Graph()
	i32 := dtypes.Int32
	h, k := bits.Shape().Dimensions[0], bits.Shape().Dimensions[1]
	kp := selectKp(k)
	cfgA, cfgB := selectConfigs(k, order == nil)
	if cfgA == "" || cfgB == "" || bp%selectSlots != 0 || bp < b {
		exceptions.Panicf("squeeze: no selection kernel for K=%d (list %d in %d slots)", k, b, bp)
	}
	pad := func(x *Node) *Node {
		x = ConvertDType(x, i32)
		if kp > k {
			x = Concatenate([]*Node{x, Zeros(g, shapes.Make(i32, h, kp-k))}, 1)
		}
		return Reshape(x, h*kp)
	}
	scalar := func(x *Node) *Node { return Reshape(ConvertDType(x, i32), 1) }
	outA := selectCall(cfgA, h, []*Node{pad(bits), pad(counts), Concatenate([]*Node{scalar(budget), Zeros(g, shapes.Make(i32, 1))}, 0)},
		[]shapes.Shape{shapes.Make(i32, h*kp), shapes.Make(i32, h*kp), shapes.Make(i32, h)})
	ends, w, total := outA[0], outA[1], outA[2]
	gidx = selectListB(cfgB, ends, w, pad(starts), total, order, clustered, window, h, b, s, bp)
	kept, taken = keptTaken(total, w, window, k, b)
	return gidx, kept, taken
}

// keptTaken are a list's kept rows a head [H] (the clusters' keys, then the window, at most b) and each
// cluster's keys in it, taken [H, K] int32, from kernel A's total [H] and w [H·Kp].
func keptTaken(total, w, window *Node, k, b int) (kept, taken *Node) {
	h := total.Shape().Dimensions[0]
	kept = MinScalar(Add(total, BroadcastToDims(Reshape(ConvertDType(window, dtypes.Int32), 1), h)), b)
	return kept, Slice(Reshape(w, h, w.Shape().Dimensions[0]/h), AxisRange(), AxisRange(0, k))
}

// selectListB runs kernel B (config cfgB) over kernel A's ends, w [H·Kp] and total [H], the starts padded to Kp
// [H·Kp] int32 and the cluster order [H, s] (nil: the sorted layout): the list gidx [H·bp] int32.
func selectListB(cfgB string, ends, w, startsP, total, order, clustered, window *Node, h, b, s, bp int) *Node {
	g := ends.Graph()
	i32 := dtypes.Int32
	scalar := func(x *Node) *Node { return Reshape(ConvertDType(x, i32), 1) }
	ord := Zeros(g, shapes.Make(i32, 1))
	if order != nil {
		if order.Shape().Dimensions[1] != s {
			exceptions.Panicf("squeeze: the cluster order has %d rows a head, the keys %d", order.Shape().Dimensions[1], s)
		}
		ord = Reshape(ConvertDType(order, i32), h*s)
	}
	nt := bp / selectSlots
	prm := Concatenate([]*Node{Const(g, []int32{int32(s)}), scalar(clustered), scalar(window), Const(g, []int32{int32(b), int32(bp), int32(nt), 0, 0})}, 0)
	return selectCall(cfgB, h*nt, []*Node{ends, w, startsP, total, ord, prm}, []shapes.Shape{shapes.Make(i32, h*bp)})[0]
}

// listToIdx turns a kernel list gidx [H·bp] (h·s + row, -1 empty) into SelectKeys' form for b slots: idx
// [H, b] int32 (local rows, 0 in unused slots) and valid [H, b].
func listToIdx(gidx *Node, h, s, b int) (idx, valid *Node) {
	g := gidx.Graph()
	bp := gidx.Shape().Dimensions[0] / h
	x := Slice(Reshape(gidx, h, bp), AxisRange(), AxisRange(0, b))
	valid = GreaterOrEqual(x, ZerosLike(x))
	local := Sub(x, MulScalar(Iota(g, shapes.Make(dtypes.Int32, h, b), 0), s))
	return Where(valid, local, ZerosLike(x)), valid
}

// ProbeSelect compiles and runs small cases through the selection kernels on b, once per backend, and says
// whether they ran and gave selectKeys' lists (as sets: the kernels' list is in cluster order), kept counts
// and taken counts, for both layouts. A plugin that cannot read the embedded bytecode fails here, so
// SelectAuto falls back to XLA's selection. On a backend without custom calls it is false at once.
func ProbeSelect(b compute.Backend) bool { return probeOnce(&selectProbed, b, probeSelect) }

func probeSelect(b compute.Backend) (ok bool) {
	const h, s, k, window, list = 3, 700, 40, 12, 330
	err := exceptions.TryCatch[error](func() {
		out := MustExecOnceN(b, func(g *Graph) []*Node {
			if !pagedAvailable(g) {
				return []*Node{Const(g, int32(-1))}
			}
			i32 := dtypes.Int32
			clustered := s - window - 8 // 8 padding rows
			// Labels and scores with ties: cluster (7·i + 3·h) mod k for key i; scores from 8 levels.
			pos := Iota(g, shapes.Make(i32, h, s), 1)
			labels := ModScalar(Add(MulScalar(pos, 7), MulScalar(Iota(g, shapes.Make(i32, h, s), 0), 3)), k)
			counts := ReduceSum(ConvertDType(Equal(
				BroadcastToDims(Reshape(Where(LessThan(pos, Scalar(g, i32, clustered)), labels, Scalar(g, i32, k)), h, s, 1), h, s, k),
				Iota(g, shapes.Make(i32, h, s, k), 2)), i32), 1) // [H, K]
			scores := ConvertDType(AddScalar(ModScalar(MulScalar(Iota(g, shapes.Make(i32, h, k), 1), 5), 8), 1), dtypes.Float32)
			order, starts := ClusterOrder(labels, counts, Scalar(g, i32, clustered))
			diff := Scalar(g, i32, 0)
			for _, budget := range []int{150, 250, 5000} {
				for _, ord := range []*Node{order, nil} {
					bud, cl, win := Scalar(g, i32, budget), Scalar(g, i32, clustered), Scalar(g, i32, window)
					idx, valid, kept, taken := selectKeys(scores, counts, starts, ord, bud, cl, win, list, SearchPasses)
					gidx, kk, tk := selectKernelList(ScoreBits(scores), counts, starts, ord, bud, cl, win, list, s, 512)
					diff = Add(diff, selectionDiff(idx, valid, kept, taken, gidx, kk, tk, s))
				}
			}
			return []*Node{diff}
		})
		ok = out[0].Value().(int32) == 0
	})
	return err == nil && ok
}

// selectionDiff counts where a kernel list gidx [H·bp] with its kept and taken counts kk, tk differs from XLA's
// selection (idx, valid [H, B], kept, taken): slots of the lists as sets of rows of s a head, then the counts.
func selectionDiff(idx, valid, kept, taken, gidx, kk, tk *Node, s int) *Node {
	h, list := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
	ki, kv := listToIdx(gidx, h, s, list)
	diff := listDiff(idx, valid, ki, kv, s)
	diff = Add(diff, ReduceAllSum(ConvertDType(NotEqual(kept, kk), dtypes.Int32)))
	return Add(diff, ReduceAllSum(ConvertDType(NotEqual(taken, tk), dtypes.Int32)))
}

// listDiff counts the slots in which two kept-key lists [H, B] (idx, valid), seen as sets of rows, differ: each
// list's valid rows sorted, invalid slots as s.
func listDiff(idx1, valid1, idx2, valid2 *Node, s int) *Node {
	g := idx1.Graph()
	canon := func(idx, valid *Node) *Node {
		x := Where(valid, ConvertDType(idx, dtypes.Int32), Scalar(g, dtypes.Int32, s))
		return sortByKey(x, x)
	}
	return ReduceAllSum(ConvertDType(NotEqual(canon(idx1, valid1), canon(idx2, valid2)), dtypes.Int32))
}
