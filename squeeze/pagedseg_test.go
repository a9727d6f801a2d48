package squeeze

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
	"github.com/gomlx/gomlx/support/exceptions"
)

// emulatePagedSeg is the contract of the paged kernel with the dynamic segment (pagedSegList; Pallas round 19,
// make_paged_seg in scripts/gpu/pallas_finish.py) in graph ops, for the pure-Go backend: with the paged kernel's six
// operands it is emulatePaged; with nine (q, gidx, keys, values, dk, dv [H·T, D] bf16, mask [M·T] int32, prm [iters,
// NS, NSD, dit, T, H] int32, scale [1]) programs [0, H·NS) are the paged kernel's over gidx, and program H·NS +
// h·NSD + j attends head h's query rows to its dynamic rows [j·dit·32, (j+1)·dit·32) ∩ [0, T) that each row's mask
// row marks (dit read at run time, as the kernel does). NSD is segSplits(T); the launch (P = H·(NS + NSD)) and prm's
// other entries must agree with it (else the outputs are NaN).
func emulatePagedSeg(t *testing.T) kernelCallFn {
	paged := emulatePaged(t)
	return func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
		if len(ops) == 3 {
			return emulateMerge(t, cfg, programs, ops, outs)
		}
		if len(ops) != 9 {
			return paged(cfg, programs, ops, outs)
		}
		q, gidx, keys, values, dk, dv, mask, prm, sc := ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], ops[7], ops[8]
		g := q.Graph()
		f32, i32 := dtypes.Float32, dtypes.Int32
		h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
		if dk.DType() != dtypes.BFloat16 || dv.DType() != dtypes.BFloat16 || mask.DType() != i32 || prm.Shape().Dimensions[0] != 6 {
			t.Errorf("dynamic operands %s %s %s, prm %s", dk.Shape(), dv.Shape(), mask.Shape(), prm.Shape())
		}
		tt := dk.Shape().Dimensions[0] / h
		nsd := segSplits(tt)
		ns := programs/h - nsd
		if programs%h != 0 || ns <= 0 || mask.Shape().Dimensions[0] != m*tt || gidx.Shape().Dimensions[0]%(h*ns*pagedRows) != 0 {
			t.Errorf("launch: %d programs for %d heads, %d dynamic splits, list %s, mask %s", programs, h, nsd, gidx.Shape(), mask.Shape())
			return []*Node{Zeros(g, outs[0]), Zeros(g, outs[1])}
		}
		iters := gidx.Shape().Dimensions[0] / (h * ns * pagedRows)
		ctx := paged(cfg, h*ns, []*Node{q, gidx, keys, values, Slice(prm, AxisRange(0, 2)), sc}, nil)
		// The dynamic programs.
		dit := Slice(prm, AxisElem(3)) // [1]
		qf := ConvertDType(q, f32)
		kf := Reshape(ConvertDType(dk, f32), h, tt, d)
		vf := Reshape(ConvertDType(dv, f32), h, tt, d)
		s := Mul(Einsum("hmd,htd->hmt", qf, kf), BroadcastToDims(Reshape(sc), h, m, tt))
		s = BroadcastToDims(Reshape(s, h, 1, m, tt), h, nsd, m, tt)
		pos := Iota(g, shapes.Make(i32, nsd, tt), 1)
		j := Iota(g, shapes.Make(i32, nsd, tt), 0)
		span := MulScalar(BroadcastToDims(dit, nsd, tt), pagedRows)
		inRange := And(GreaterOrEqual(pos, Mul(j, span)), LessThan(pos, Mul(AddScalar(j, 1), span)))
		rows := NotEqual(Reshape(mask, m, tt), Scalar(g, i32, 0))
		keep := And(BroadcastToDims(Reshape(inRange, 1, nsd, 1, tt), h, nsd, m, tt), BroadcastToDims(Reshape(rows, 1, 1, m, tt), h, nsd, m, tt))
		s = Where(keep, s, Scalar(g, f32, math.Inf(-1)))
		mx := ReduceAndKeep(s, ReduceMax, -1)
		mx = Where(IsFinite(mx), mx, ZerosLike(mx))
		e := Where(keep, Exp(Sub(s, BroadcastToDims(mx, h, nsd, m, tt))), ZerosLike(s))
		sum := ReduceSum(e, -1) // [H, NSD, M]
		o := Einsum("hjmt,htd->hjmd", e, vf)
		o = Div(o, BroadcastToDims(Reshape(MaxScalar(sum, 1e-30), h, nsd, m, 1), h, nsd, m, d))
		lse := Where(GreaterThan(sum, ZerosLike(sum)), Add(Reshape(mx, h, nsd, m), Log(MaxScalar(sum, 1e-30))), Scalar(g, f32, math.Inf(-1)))
		o = Concatenate([]*Node{ctx[0], Reshape(o, h*nsd, m, d)}, 0)
		lse = Concatenate([]*Node{ctx[1], Reshape(lse, h*nsd, m)}, 0)
		// The entries the kernel reads at run time besides dit must match the launch.
		want := Const(g, []int32{int32(iters), int32(ns), int32(nsd), int32(tt), int32(h)})
		got := Concatenate([]*Node{Slice(prm, AxisRange(0, 3)), Slice(prm, AxisRange(4, 6))}, 0)
		ok := ReduceAllMin(ConvertDType(Equal(got, want), i32))
		o = Where(BroadcastToDims(GreaterThan(ok, ZerosLike(ok)), programs, m, d), o, BroadcastToDims(Scalar(g, f32, math.NaN()), programs, m, d))
		return []*Node{o, lse}
	}
}

// emulateMerge is the merge kernel's contract (mergeConfig; Pallas round 21, make_merge2) in graph ops: operands o
// [P, M, D], lse [P, M] (-Inf: a program that saw nothing), prm [NS, NSD, H] int32 with P = H·(NS + NSD); program
// h·M + r merges row r of head h's list programs (rows [h·NS, (h+1)·NS)) and dynamic programs (rows [H·NS + h·NSD,
// H·NS + (h+1)·NSD)): out [H, M, D], lse [H, M] (-Inf where nothing was seen). NS and NSD come from the launch (H·M
// programs, outs[0] [H, M, D]) and the dynamic segment's rule (segSplits is not known here: prm is read at run time,
// its H checked, its NS and NSD must split P as the outputs say: else NaN).
func emulateMerge(t *testing.T, cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
	o, lse, prm := ops[0], ops[1], ops[2]
	g := o.Graph()
	f32 := dtypes.Float32
	h, m, d := outs[0].Dimensions[0], outs[0].Dimensions[1], outs[0].Dimensions[2]
	p := o.Shape().Dimensions[0]
	if cfg != mergeConfig(m, d) || programs != h*m || o.DType() != f32 || lse.DType() != f32 || p%h != 0 {
		t.Errorf("merge kernel: %d programs for %s, o %s, lse %s", programs, outs[0], o.Shape(), lse.Shape())
		return []*Node{Zeros(g, outs[0]), Zeros(g, outs[1])}
	}
	// Every split of a head, list and dynamic: a [H, P/H] gather of rows by the run-time NS and NSD.
	nt := p / h
	ns := Slice(prm, AxisElem(0))
	j := Iota(g, shapes.Make(dtypes.Int32, h, nt), 1)
	hh := Iota(g, shapes.Make(dtypes.Int32, h, nt), 0)
	nsB, nsdB := BroadcastToDims(ns, h, nt), BroadcastToDims(Slice(prm, AxisElem(1)), h, nt)
	rows := Where(LessThan(j, nsB), Add(Mul(hh, nsB), j), Add(Add(MulScalar(nsB, float64(h)), Mul(hh, nsdB)), Sub(j, nsB)))
	rows = Clamp(Scalar(g, dtypes.Int32, 0), rows, Scalar(g, dtypes.Int32, p-1))
	og := Reshape(Gather(o, Reshape(rows, h*nt, 1)), h, nt, m, d)
	lg := Reshape(Gather(lse, Reshape(rows, h*nt, 1)), h, nt, m)
	part := mergeSplits(og, lg)
	out, l := part.Out, Reshape(part.LSE, h, m)
	l = Where(GreaterThan(l, Scalar(g, f32, negInf)), l, Scalar(g, f32, math.Inf(-1)))
	want := Const(g, []int32{int32(h)})
	bad := Or(NotEqual(Slice(prm, AxisElem(2)), want), NotEqual(Add(Slice(prm, AxisElem(0)), Slice(prm, AxisElem(1))), Const(g, []int32{int32(nt)})))
	out = Where(BroadcastToDims(Reshape(bad, 1, 1, 1), h, m, d), Scalar(g, f32, math.NaN()), out)
	return []*Node{out, l}
}

// withPagedSeg installs the emulated kernels (paged, with the dynamic segment, and selection) with the given modes.
func withPagedSeg(t *testing.T, seg PagedMode, sel SelectMode) {
	withSelectKernels(t, sel, PagedOn)
	save := PagedSeg
	t.Cleanup(func() { PagedSeg = save })
	pagedCall, PagedSeg = emulatePagedSeg(t), seg
}

// TestAttendSelectedDyn: AttendSelectedDyn through the paged kernel with the dynamic segment (emulated) gives the
// kept keys' attention merged with dense attention over the dynamic rows each query row sees, as AttendSelected and
// DenseAttention merged: one and three query rows a KV head, head dims 64 and 128, dynamic segments shorter than a
// tile and over several programs, masks that differ by row, an empty one, XLA's and the kernels' selection lists, a
// hierarchical index, the calibrated mode; the splits merged by the merge kernel (emulated).
// With the remainder, PagedSeg off or the index's Seg off, it takes the two-part path, with the same result; the
// index's Seg on takes the kernel whatever PagedSeg says.
func TestAttendSelectedDyn(t *testing.T) {
	const h, s, k, clustered, window = 2, 400, 24, 380, 12
	rng := rand.New(rand.NewPCG(31, 32))
	for _, c := range []struct {
		name      string
		m, d, t   int
		visible   []int // per query row: the dynamic rows below it are seen
		sel       SelectMode
		seg       PagedMode
		remainder bool
		wantSeg   bool
		ixSeg     SelectMode // the index's own mode (LayerIndex.Seg)
		mode      string     // "hier": a hierarchical index; "threshold": calibrated mode
	}{
		{"decode-xla-list", 1, 64, 45, []int{40}, SelectOff, PagedOn, false, true, SelectAuto, ""},
		{"decode-kernel-list", 1, 128, 300, []int{271}, SelectOn, PagedOn, false, true, SelectAuto, ""},
		{"grouped-rows-differ", 3, 64, 300, []int{300, 150, 7}, SelectOn, PagedOn, false, true, SelectAuto, ""},
		{"grouped-empty-row", 3, 128, 70, []int{0, 33, 70}, SelectOff, PagedOn, false, true, SelectAuto, ""},
		{"nothing-visible", 2, 64, 70, []int{0, 0}, SelectOn, PagedOn, false, true, SelectAuto, ""},
		{"remainder", 1, 64, 45, []int{40}, SelectOn, PagedOn, true, false, SelectAuto, ""},
		{"seg-off", 3, 64, 300, []int{300, 150, 7}, SelectOn, PagedOff, false, false, SelectAuto, ""},
		{"index-off", 1, 64, 45, []int{40}, SelectOn, PagedOn, false, false, SelectOff, ""},
		{"index-on", 1, 64, 45, []int{40}, SelectOn, PagedOff, false, true, SelectOn, ""},
		{"hierarchical", 1, 64, 45, []int{40}, SelectOn, PagedOn, false, true, SelectAuto, "hier"},
		{"threshold", 3, 64, 70, []int{70, 20, 5}, SelectOn, PagedOn, false, true, SelectAuto, "threshold"},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := randn(rng, 2, h, c.m, c.d)
			keys, vals := randn(rng, 1, h, s, c.d), randn(rng, 1, h, s, c.d)
			dk, dv := randn(rng, 1, h, c.t, c.d), randn(rng, 1, h, c.t, c.d)
			mask := make([]bool, c.m*c.t)
			for r, n := range c.visible {
				for i := range n {
					mask[r*c.t+i] = true
				}
			}
			maskT := tensors.FromFlatDataAndDimensions(mask, 1, c.m, c.t)
			withPagedSeg(t, c.seg, c.sel)
			segCalls, mergeCalls := 0, 0
			emu := pagedCall
			pagedCall = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
				switch len(ops) {
				case 9:
					segCalls++
				case 3:
					mergeCalls++
				}
				return emu(cfg, programs, ops, outs)
			}
			out := MustExecOnceN(testBackend(), func(q, keys, vals, dk, dv, mask *Node) []*Node {
				bf, f32 := dtypes.BFloat16, dtypes.Float32
				kb, vb, dkb, dvb := ConvertDType(keys, bf), ConvertDType(vals, bf), ConvertDType(dk, bf), ConvertDType(dv, bf)
				qf := ConvertDType(ConvertDType(q, bf), f32)
				ix := attendTestIndex(kb, vb, clustered, window, k, c.mode == "hier", c.remainder)
				if c.mode == "threshold" {
					ix.Threshold = Const(q.Graph(), float32(1.0/float32(clustered)))
				}
				ix.Seg = c.ixSeg
				p, kept := AttendSelectedDyn(qf, kb, vb, dkb, dvb, mask, ix, Scale(c.d), KernelAuto)
				// The reference: the same kept keys through the paged kernel alone, the dynamic rows in float32.
				ref, refKept := AttendSelected(qf, kb, vb, ix, Scale(c.d), KernelPaged)
				if c.wantSeg {
					ref = Merge(ref, DenseAttention(qf, ConvertDType(dkb, f32), ConvertDType(dvb, f32), mask, Scale(c.d)))
				} else { // the two-part path attends the dynamic rows as the engine's dense attention does (bf16 weights)
					ref = Merge(ref, DenseAttention(qf, dkb, dvb, mask, Scale(c.d)))
				}
				return []*Node{p.Out, p.LSE, kept, ref.Out, ref.LSE, refKept}
			}, q, keys, vals, dk, dv, maskT)
			if got := segCalls > 0; got != c.wantSeg || mergeCalls != segCalls {
				t.Errorf("the kernel with the dynamic segment ran %d times, the merge kernel %d, want them used: %v", segCalls, mergeCalls, c.wantSeg)
			}
			o, lse, ro, rl := flat(out[0]), flat(out[1]), flat(out[3]), flat(out[4])
			allFinite(t, "output", o)
			const tol = 2e-5
			if diff := maxAbsDiff(o, ro); diff > tol {
				t.Errorf("output differs from the two parts merged by %.2e", diff)
			}
			if diff := maxAbsDiff(lse, rl); diff > tol {
				t.Errorf("log-sum-exp differs from the two parts merged by %.2e", diff)
			}
			if a, b := flatI32(out[2]), flatI32(out[5]); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("kept %v, AttendSelected %v", a, b)
			}
		})
	}
}

// TestAttendSelectedDynMask: a mask that is not [1, M, T] (or [M, T]) is named in the error.
func TestAttendSelectedDynMask(t *testing.T) {
	err := exceptions.TryCatch[error](func() {
		MustExecOnceN(testBackend(), func(q *Node) []*Node {
			g := q.Graph()
			kv := Zeros(g, shapes.Make(dtypes.BFloat16, 2, 100, 64))
			dyn := Zeros(g, shapes.Make(dtypes.BFloat16, 2, 20, 64))
			mask := Zeros(g, shapes.Make(dtypes.Bool, 2, 3, 20))
			ix := attendTestIndex(kv, kv, 90, 10, 8, false, false)
			p, _ := AttendSelectedDyn(q, kv, kv, dyn, dyn, mask, ix, 0.1, KernelAuto)
			return []*Node{p.Out}
		}, tensors.FromShape(shapes.Make(dtypes.Float32, 2, 3, 64)))
	})
	if err == nil || !strings.Contains(err.Error(), "dynamic-segment mask") {
		t.Errorf("a per-head mask: %v", err)
	}
}

// TestProbePagedSeg: the probe passes with the emulated kernel and fails where the backend has no kernel, where the
// dynamic programs' results are lost, where the results are wrong for four query rows a KV head only, and where the
// kernel cannot be compiled; under PagedAuto the kernel is taken for up to PagedSegAutoMaxQueries query rows a KV
// head once the probe passed, never for more rows than the paged kernel takes.
func TestProbePagedSeg(t *testing.T) {
	emu := emulatePagedSeg(t)
	checkProbe(t, probePagedSeg, &pagedCall, emu, map[string]func(ops, r []*Node) []*Node{
		"that drops the dynamic programs": func(ops, r []*Node) []*Node {
			if len(ops) != 9 {
				return r
			}
			h := ops[0].Shape().Dimensions[0]
			nsd := segSplits(ops[4].Shape().Dimensions[0] / h)
			p, m := r[1].Shape().Dimensions[0], r[1].Shape().Dimensions[1]
			g := r[1].Graph()
			dyn := GreaterOrEqual(Iota(g, shapes.Make(dtypes.Int32, p, m), 0), Scalar(g, dtypes.Int32, p-h*nsd))
			return []*Node{r[0], Where(dyn, Scalar(g, dtypes.Float32, math.Inf(-1)), r[1])}
		},
		"whose outputs differ for four query rows a KV head": func(ops, r []*Node) []*Node {
			if ops[0].Shape().Dimensions[1] > 1 {
				return []*Node{MulScalar(r[0], 1.1), r[1]}
			}
			return r
		},
		"whose merged log-sum-exp is off": func(ops, r []*Node) []*Node {
			if len(ops) == 3 {
				return []*Node{r[0], AddScalar(r[1], -0.5)}
			}
			return r
		},
	})
	defer pagedSegProbed.Delete(testBackend())
	savePaged, saveSeg := Paged, PagedSeg
	defer func() { Paged, PagedSeg = savePaged, saveSeg }()
	Paged, PagedSeg = PagedOn, PagedAuto
	for _, c := range []struct {
		probed bool
		m      int
		want   bool
	}{{false, 1, false}, {true, 1, true}, {false, 4, false}, {true, 4, PagedSegAutoMaxQueries >= 4}, {true, 12, false}} {
		pagedSegProbed.Store(testBackend(), c.probed)
		var got bool
		MustExecOnceN(testBackend(), func(q *Node) []*Node {
			g := q.Graph()
			kv := Zeros(g, shapes.Make(dtypes.BFloat16, 2, 64, 64))
			got = pagedSegKernel(q, kv, kv, kv, kv, KernelAuto, SelectAuto) != ""
			return []*Node{q}
		}, tensors.FromShape(shapes.Make(dtypes.Float32, 2, c.m, 64)))
		if got != c.want {
			t.Errorf("PagedAuto, probed %v, M=%d: kernel taken %v", c.probed, c.m, got)
		}
	}
}

// TestPagedSegConfigs: every embedded config loads and launches with any grid; the dynamic splits follow the
// segment's length; the pure-Go backend never takes the kernel.
func TestPagedSegConfigs(t *testing.T) {
	for m := 1; m <= PagedMaxQueries; m++ {
		for _, d := range []int{64, 128} {
			cfg := pagedSegConfig(m, d)
			if cfg == "" {
				t.Fatalf("no embedded kernel for M=%d D=%d", m, d)
			}
			if cfg == pagedConfig(m, d) {
				t.Errorf("M=%d D=%d: the same config as the paged kernel's", m, d)
			}
			if mc := mergeConfig(m, d); mc == "" || mc == cfg || !strings.Contains(pagedBackendConfig(mc, 24), "grid_x = 24 : i32") {
				t.Errorf("M=%d D=%d: no usable merge kernel config", m, d)
			}
			if got := pagedBackendConfig(cfg, 555); !strings.Contains(got, "grid_x = 555 : i32") || strings.Count(got, "grid_x") != 1 {
				t.Errorf("M=%d D=%d: launch config %.60q…", m, d, got)
			}
		}
	}
	for _, c := range [][2]int{{1, 1}, {128, 1}, {129, 2}, {1024, 8}, {5000, 16}} {
		if got := segSplits(c[0]); got != c[1] {
			t.Errorf("segSplits(%d) = %d, want %d", c[0], got, c[1])
		}
	}
	save := PagedSeg
	defer func() { PagedSeg = save }()
	PagedSeg = PagedOn
	if PagedSegFor(testBackend(), 1, 128) {
		t.Errorf("the pure-Go backend takes the kernel with the dynamic segment")
	}
}
