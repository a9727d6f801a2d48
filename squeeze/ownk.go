package squeeze

import (
	"math"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// The own-tokens kernel: on a GPU, a user input's first step over a squeezed prefix attends the input's own tokens
// (causal) and merges them with the kept keys' partial in one Triton kernel, in place of a second cuDNN call and
// XLA's log-sum-exp merge. Program (h, b) holds ownBM query rows of KV head h; it starts each row's online softmax
// from the kept keys' partial (cuDNN's normalised output in bfloat16 and its log-sum-exp), then walks the input's own
// keys and values BN at a time up to its rows' last token, and writes the merged output and log-sum-exp.
//
// Why: XLA runs a cuDNN attention call only after four memsets (its output, statistics and two scratch buffers;
// CuDnnThunk zeroes them for every attention call), outside command buffers for an input step. In a CUPTI
// timeline of the attention benchmark's input phase (H100, session 20, LLaMA-2-7B 128K, 512 tokens) each of the
// two cuDNN calls a layer came 13 µs after the kernel before it, and the own tokens' call (13.1 µs), its gap and the
// merge (1.7 + 5.1 µs) took 33 µs of the layer's 606.
//
// Written in Pallas (scripts/gpu/pallas_input.py: round 27's make_own, session 18; head-major rows in round 32,
// session 20), exported for head dims 64 and 128 (kernels/own_d{64,128}.cfg.gz: 128-row blocks, 64 keys a tile, 8
// warps, 2 stages, the row blocks with the most own tokens first, round 27's fastest on an H200). Its IR takes every
// size at run time. Checked there against a float32 reference (ragged inputs, group sizes 1, 3 and 4, a head that
// kept nothing, both row layouts; 6.4e-3 at most, bfloat16 inputs).
//
// Operands: q [H·M, D] bf16 (row h·M + r), dk, dv [H·T, D] bf16 (the input's own keys and values: rows h·T + i for
// i < n), o1 [H·M, D] bf16 and lse1 [H·M] f32 (the kept keys' partial, natural log), seen [H] i32 (> 0: head h's
// partial counts), prm [8] i32 = (M, G, n, T, 0, nMB, HM, 0) and scale [1] f32; outputs o [P·ownBM, D] f32, lse
// [P·ownBM] f32 (P = H·nMB programs; program (h, b) writes rows (h·nMB + b)·ownBM onward). HM 1: a head's rows are
// head-major (row j·n + i: query head j of token i), as squeezedAttention lays out a user input; 0: token-major.

// ownBM is the embedded kernel's block of query rows (round 32's export).
const ownBM = 128

// OwnKernels is when a user input's own tokens run in the own-tokens kernel (SelectMode's values: SelectAuto on a
// backend that passed ProbeOwn, SelectOff never, SelectOn wherever there is a kernel); the engine sets it from
// SQLLM_SQUEEZE_OWN (1: SelectOn, 0: SelectOff, unset: SelectAuto).
var OwnKernels = SelectAuto

var ownProbed sync.Map // compute.Backend → bool

// ownCall emits the kernel call; tests replace it with a graph emulation of the kernel (the pure-Go backend cannot
// run Triton).
var ownCall = tritonLaunch

// ownConfig is the embedded config for head dim d ("" where there is none).
func ownConfig(d int) string {
	if d != 64 && d != 128 {
		return ""
	}
	if d == 64 {
		return kernelConfig("kernels/own_d64.cfg.gz")
	}
	return kernelConfig("kernels/own_d128.cfg.gz")
}

// OwnFor says whether a user input's steps on backend b with head dim d, in a model of the given dtype, attend the
// input's own tokens in the own-tokens kernel (under SelectAuto it runs ProbeOwn once).
func OwnFor(b compute.Backend, d int, dtype dtypes.DType) bool {
	return dtype == dtypes.BFloat16 && ownConfig(d) != "" && kernelsFor(b, OwnKernels, ProbeOwn)
}

// OwnMerge is Merge(kept, the causal attention of a user input's n tokens over their own keys) through the
// own-tokens kernel: q [H, G·n, D] bfloat16 with each KV head's rows head-major (row j·n + i: query head j of token
// i), dynK and dynV [H, T, D] bfloat16 whose rows 0 .. n-1 are the tokens' keys and values, kept the kept keys'
// partial for the same rows (Out [H, G·n, D], LSE [H, G·n, 1]; LSE -1e30 or below where nothing was kept). ok is false
// where there is no kernel for these inputs or mode (zero: OwnKernels) says no; use the fused causal call and
// Merge then.
func OwnMerge(q, dynK, dynV *Node, n int, kept Partial, scale float64, mode SelectMode) (p Partial, ok bool) {
	g := q.Graph()
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	t := dynK.Shape().Dimensions[1]
	bf16 := dtypes.BFloat16
	if mode == SelectAuto {
		mode = OwnKernels
	}
	if n <= 0 || m%n != 0 || t < n || q.DType() != bf16 || dynK.DType() != bf16 || dynV.DType() != bf16 ||
		!kernelsWanted(g, mode, OwnKernels, &ownProbed) {
		return p, false
	}
	cfg := ownConfig(d)
	if cfg == "" {
		return p, false
	}
	f32, i32 := dtypes.Float32, dtypes.Int32
	nmb := (m + ownBM - 1) / ownBM
	progs := h * nmb
	prm := Const(g, []int32{int32(m), int32(m / n), int32(n), int32(t), 0, int32(nmb), 1, 0})
	// Every head's partial counts: a head that kept nothing has LSE -1e30 and output 0, which weigh nothing
	// against the first own token (as in Merge).
	seen := Ones(g, shapes.Make(i32, h))
	outs := ownCall(cfg, progs, []*Node{Reshape(q, h*m, d), Reshape(dynK, h*t, d), Reshape(dynV, h*t, d),
		Reshape(ConvertDType(kept.Out, bf16), h*m, d), Reshape(ConvertDType(kept.LSE, f32), h*m), seen, prm,
		Const(g, []float32{float32(scale)})},
		[]shapes.Shape{shapes.Make(f32, progs*ownBM, d), shapes.Make(f32, progs*ownBM)})
	out := Slice(Reshape(outs[0], h, nmb*ownBM, d), AxisRange(), AxisRange(0, m))
	lse := Slice(Reshape(outs[1], h, nmb*ownBM, 1), AxisRange(), AxisRange(0, m))
	return Partial{Out: out, LSE: lse}, true
}

// ProbeOwn compiles and runs small cases through the own-tokens kernel on b, once per backend, and says whether they
// ran and agreed with the fused causal call merged with the same partial (Merge): head dims 64 and 128, group sizes
// 1, 3 and 4, inputs that are not a multiple of the kernel's row block, a head that kept nothing. On a backend
// without custom calls it is false at once.
func ProbeOwn(b compute.Backend) bool { return probeOnce(&ownProbed, b, probeOwn) }

func probeOwn(b compute.Backend) (ok bool) {
	worst := math.Inf(1)
	err := exceptions.TryCatch[error](func() {
		out := MustExecOnceN(b, func(g *Graph) []*Node {
			if !pagedAvailable(g) {
				return []*Node{Const(g, float32(math.Inf(1)))}
			}
			worst := Scalar(g, dtypes.Float32, 0)
			for _, c := range []struct{ h, grp, n, t, d int }{{3, 1, 200, 256, 128}, {2, 4, 77, 80, 128}, {2, 3, 45, 64, 64}, {4, 1, 130, 130, 64}} {
				q, dk, dv, kept := probeOwnInputs(g, c.h, c.grp, c.n, c.t, c.d)
				scale := Scale(c.d)
				got, ok := OwnMerge(q, dk, dv, c.n, kept, scale, SelectOn)
				if !ok {
					return []*Node{Const(g, float32(math.Inf(1)))}
				}
				dyn, ok := CausalAttentionFusedHeadMajor(q, Slice(dk, AxisRange(), AxisRange(0, c.n)), Slice(dv, AxisRange(), AxisRange(0, c.n)), scale)
				if !ok {
					return []*Node{Const(g, float32(math.Inf(1)))}
				}
				want := Merge(kept, dyn)
				e := Max(ReduceAllMax(Abs(Sub(got.Out, want.Out))), ReduceAllMax(Abs(Sub(got.LSE, want.LSE))))
				worst = Max(worst, Where(IsFinite(e), e, Scalar(g, dtypes.Float32, float32(math.Inf(1)))))
			}
			return []*Node{worst}
		})
		worst = float64(out[0].Value().(float32))
	})
	// bfloat16 inputs on both sides; the two differ in the order of their sums (the kernel's online softmax in
	// base 2 against cuDNN's, then the merge).
	return err == nil && worst <= 3e-2
}

// probeOwnInputs are a probe case's head-major queries [h, grp·n, d], own keys and values [h, t, d] (rows past n are
// not the input's) bfloat16 values of a fixed pattern, and a kept partial (outputs of size about 1, log-sum-exps
// about ±4; the last head kept nothing: output 0, log-sum-exp -1e30).
func probeOwnInputs(g *Graph, h, grp, n, t, d int) (q, dk, dv *Node, kept Partial) {
	f32 := dtypes.Float32
	wave := func(rows int, a, b, c float64) *Node {
		i := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 1), f32)
		j := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 2), f32)
		hh := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 0), f32)
		return Sin(Add(Add(MulScalar(i, a), MulScalar(j, b)), MulScalar(hh, c)))
	}
	m := grp * n
	q = ConvertDType(MulScalar(wave(m, 0.37, 1.3, 0.5), 2), dtypes.BFloat16)
	dk = ConvertDType(MulScalar(wave(t, 0.71, 0.53, 0.9), 2), dtypes.BFloat16)
	dv = ConvertDType(wave(t, 0.23, 0.91, 1.7), dtypes.BFloat16)
	out := ConvertDType(ConvertDType(wave(m, 0.11, 0.29, 1.1), dtypes.BFloat16), f32)
	lse := MulScalar(Sin(ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, m, 1), 1), f32)), 4)
	last := Equal(Iota(g, shapes.Make(dtypes.Int32, h, m, 1), 0), Scalar(g, dtypes.Int32, h-1))
	lse = Where(last, Scalar(g, f32, negInf), lse)
	out = Where(BroadcastToDims(last, h, m, d), ZerosLike(out), out)
	return q, dk, dv, Partial{Out: out, LSE: lse}
}
