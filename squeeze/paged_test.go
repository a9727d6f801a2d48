package squeeze

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
	"github.com/gomlx/gomlx/support/exceptions"
)

// emulatePaged is the paged Triton kernel's contract (scripts/gpu/pallas_squeeze2.py, make_paged_dyn) in
// graph ops, for the pure-Go backend: operands q [H, M, D] bf16, gidx [P·L] int32 (program p's slots are
// gidx[p·L : (p+1)·L], global rows into keys/values [N, D], -1 empty), keys, values [N, D] bf16, prm
// [iters, NS] int32, scale [1] float32; program p attends head p / NS's queries to its slots and writes its
// normalised output [P, M, D] and log-sum-exp [P, M] (-Inf if it saw no key). It checks the launch it is
// given: P programs, L = iters·32 slots each, P = H·NS.
func emulatePaged(t *testing.T) func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
	return func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
		q, gidx, keys, values, prm, sc := ops[0], ops[1], ops[2], ops[3], ops[4], ops[5]
		g := q.Graph()
		h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
		if !strings.Contains(cfg, `ir = "ML\EFR`) {
			t.Errorf("the kernel's config carries no MLIR bytecode")
		}
		if q.DType() != dtypes.BFloat16 || keys.DType() != dtypes.BFloat16 || gidx.DType() != dtypes.Int32 {
			t.Errorf("operand dtypes %s %s %s", q.DType(), keys.DType(), gidx.DType())
		}
		p := programs
		l := gidx.Shape().Dimensions[0] / p
		if p%h != 0 || l*p != gidx.Shape().Dimensions[0] || l%pagedRows != 0 {
			t.Errorf("launch: %d programs for %d heads and %d slots", p, h, gidx.Shape().Dimensions[0])
		}
		ns := p / h
		f32 := dtypes.Float32
		rows := Reshape(gidx, 1, p*l)
		keep := Reshape(GreaterOrEqual(rows, ZerosLike(rows)), p, 1, l)
		rc := MaxScalar(rows, 0)
		kg := Reshape(ConvertDType(GatherRows(Reshape(keys, 1, -1, d), rc), f32), p, l, d)
		vg := Reshape(ConvertDType(GatherRows(Reshape(values, 1, -1, d), rc), f32), p, l, d)
		qp := Reshape(BroadcastToDims(Reshape(ConvertDType(q, f32), h, 1, m, d), h, ns, m, d), p, m, d)
		s := Mul(Einsum("pmd,pld->pml", qp, kg), BroadcastToDims(Reshape(sc), p, m, l))
		mask := BroadcastToDims(keep, p, m, l)
		s = Where(mask, s, Scalar(g, f32, math.Inf(-1)))
		mx := ReduceAndKeep(s, ReduceMax, -1)
		mx = Where(IsFinite(mx), mx, ZerosLike(mx))
		e := Where(mask, Exp(Sub(s, BroadcastToDims(mx, p, m, l))), ZerosLike(s))
		sum := ReduceSum(e, -1) // [P, M]
		o := Div(Einsum("pml,pld->pmd", e, vg), BroadcastToDims(Reshape(MaxScalar(sum, 1e-30), p, m, 1), p, m, d))
		lse := Where(GreaterThan(sum, ZerosLike(sum)), Add(Reshape(mx, p, m), Log(MaxScalar(sum, 1e-30))),
			Scalar(g, f32, math.Inf(-1)))
		// The tile count and splits the kernel reads at run time must match the launch.
		want := Const(g, []int32{int32(l / pagedRows), int32(ns)})
		ok := ReduceAllMin(ConvertDType(Equal(prm, want), dtypes.Int32))
		o = Where(BroadcastToDims(GreaterThan(ok, ZerosLike(ok)), p, m, d), o, BroadcastToDims(Scalar(g, f32, math.NaN()), p, m, d))
		return []*Node{o, lse}
	}
}

// TestSparseAttentionPaged: through the paged kernel's contract (emulated), SparseAttentionPaged gives
// SparseAttention's partial over the same kept-row lists: lists shorter and longer than one split's tile,
// several tiles per program, empty slots, a head that kept nothing, one and several query rows per KV head.
func TestSparseAttentionPaged(t *testing.T) {
	saveCall, saveAvail := pagedCall, pagedAvailable
	defer func() { pagedCall, pagedAvailable = saveCall, saveAvail }()
	pagedCall, pagedAvailable = emulatePaged(t), func(*Graph) bool { return true }
	const h, s = 3, 1500
	rng := rand.New(rand.NewPCG(7, 8))
	for _, c := range []struct{ m, d, b int }{{1, 64, 70}, {3, 128, 200}, {8, 64, 1100}, {4, 128, 1500}} {
		t.Run(fmt.Sprintf("M%d_D%d_B%d", c.m, c.d, c.b), func(t *testing.T) {
			q := randn(rng, 1, h, c.m, c.d)
			keys, vals := randn(rng, 1, h, s, c.d), randn(rng, 1, h, s, c.d)
			idx := make([]int32, h*c.b)
			valid := make([]bool, h*c.b)
			for hh := range h {
				kept := []int{c.b, c.b / 3, 0}[hh] // a full list, a prefix, nothing
				for i, r := range rng.Perm(s)[:c.b] {
					idx[hh*c.b+i] = int32(r)
					valid[hh*c.b+i] = i < kept
				}
			}
			idxT, validT := tensors.FromFlatDataAndDimensions(idx, h, c.b), tensors.FromFlatDataAndDimensions(valid, h, c.b)
			scale := Scale(c.d)
			out := MustExecOnceN(testBackend(), func(q, keys, vals, idx, valid *Node) []*Node {
				bf := dtypes.BFloat16
				kb, vb := ConvertDType(keys, bf), ConvertDType(vals, bf)
				p, ok := SparseAttentionPaged(q, kb, vb, idx, valid, scale)
				if !ok {
					t.Fatalf("SparseAttentionPaged refused M=%d D=%d", c.m, c.d)
				}
				// The reference from the same bf16 values, in float32.
				qf := ConvertDType(ConvertDType(q, bf), dtypes.Float32)
				ref := SparseAttention(qf, ConvertDType(kb, dtypes.Float32), ConvertDType(vb, dtypes.Float32), idx, valid, scale)
				return []*Node{p.Out, p.LSE, ref.Out, ref.LSE}
			}, q, keys, vals, idxT, validT)
			o, lse, ro, rl := flat(out[0]), flat(out[1]), flat(out[2]), flat(out[3])
			allFinite(t, "paged output", o)
			if diff := maxAbsDiff(o, ro); diff > 2e-5 {
				t.Errorf("output differs from SparseAttention by %.2e", diff)
			}
			for i := range lse {
				if (rl[i] <= negInf) != (lse[i] <= negInf) || (rl[i] > negInf && math.Abs(float64(lse[i]-rl[i])) > 2e-5) {
					t.Errorf("log-sum-exp row %d: %v, SparseAttention %v", i, lse[i], rl[i])
				}
			}
			if lse[(h-1)*c.m] > negInf {
				t.Errorf("the head that kept nothing has log-sum-exp %v", lse[(h-1)*c.m])
			}
		})
	}
}

// TestPagedFallbacks: where there is no kernel for the inputs, SparseAttentionPaged declines (and the
// pure-Go backend never emits the custom call); every embedded kernel config loads and can be launched
// with any number of programs.
func TestPagedFallbacks(t *testing.T) {
	for m := 1; m <= PagedMaxQueries; m++ {
		for _, d := range []int{64, 128} {
			cfg := pagedConfig(m, d)
			if cfg == "" {
				t.Fatalf("no embedded kernel for M=%d D=%d", m, d)
			}
			if got := pagedBackendConfig(cfg, 777); !strings.Contains(got, "grid_x = 777 : i32") || strings.Count(got, "grid_x") != 1 {
				t.Errorf("M=%d D=%d: launch config %q…", m, d, got[:60])
			}
		}
	}
	if pagedConfig(3, 96) != "" || pagedConfig(9, 128) != "" {
		t.Errorf("configs for kernels that do not exist")
	}
	saveAvail := pagedAvailable
	defer func() { pagedAvailable = saveAvail }()
	try := func(m, d int, dt dtypes.DType) bool {
		var ok bool
		MustExecOnceN(testBackend(), func(q *Node) []*Node {
			g := q.Graph()
			kv := Zeros(g, shapes.Make(dt, 2, 64, d))
			idx := Zeros(g, shapes.Make(dtypes.Int32, 2, 8))
			valid := Const(g, make([]bool, 16))
			_, ok = SparseAttentionPaged(q, kv, kv, Reshape(idx, 2, 8), Reshape(valid, 2, 8), 0.1)
			return []*Node{q}
		}, tensors.FromShape(shapes.Make(dtypes.Float32, 2, m, d)))
		return ok
	}
	if try(1, 128, dtypes.BFloat16) {
		t.Errorf("the pure-Go backend took the paged kernel")
	}
	pagedAvailable = func(*Graph) bool { return true }
	for _, c := range []struct {
		m, d int
		dt   dtypes.DType
	}{{9, 128, dtypes.BFloat16}, {1, 96, dtypes.BFloat16}, {1, 128, dtypes.Float32}, {2, 64, dtypes.Float16}} {
		if try(c.m, c.d, c.dt) {
			t.Errorf("M=%d D=%d %s: took a kernel that does not exist", c.m, c.d, c.dt)
		}
	}
}

// TestAttendKeptPaged: KernelAuto takes the paged kernel for a decode step as Paged says (PagedAuto: up to
// PagedMaxQueries query rows per KV head, once the backend passed ProbePaged), KernelPaged always, and neither for
// a step of more query rows than the kernels take.
func TestAttendKeptPaged(t *testing.T) {
	saveCall, saveAvail, savePaged := pagedCall, pagedAvailable, Paged
	defer func() { pagedCall, pagedAvailable, Paged = saveCall, saveAvail, savePaged }()
	defer pagedProbed.Delete(testBackend())
	calls := 0
	emu := emulatePaged(t)
	pagedCall = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
		calls++
		return emu(cfg, programs, ops, outs)
	}
	pagedAvailable = func(*Graph) bool { return true }
	for _, c := range []struct {
		paged  PagedMode
		probed bool
		kernel Kernel
		m      int
		want   int
	}{{PagedOff, true, KernelAuto, 1, 0}, {PagedOn, false, KernelAuto, 1, 1}, {PagedOff, false, KernelPaged, 4, 1},
		{PagedOn, true, KernelAuto, 12, 0}, {PagedOn, true, KernelEinsum, 1, 0}, {PagedOn, false, KernelAuto, 4, 1},
		{PagedAuto, false, KernelAuto, 1, 0}, {PagedAuto, true, KernelAuto, 1, 1}, {PagedAuto, true, KernelAuto, 4, 1},
		{PagedAuto, false, KernelAuto, 4, 0}, {PagedAuto, true, KernelAuto, 12, 0}} {
		Paged, calls = c.paged, 0
		pagedProbed.Store(testBackend(), c.probed)
		MustExecOnceN(testBackend(), func(q *Node) []*Node {
			g := q.Graph()
			kv := ConvertDType(Iota(g, shapes.Make(dtypes.Float32, 2, 64, 64), 1), dtypes.BFloat16)
			idx := Iota(g, shapes.Make(dtypes.Int32, 2, 8), 1)
			valid := Const(g, [][]bool{{true, true, true, false, false, false, false, false}, make([]bool, 8)})
			return []*Node{AttendKept(q, kv, kv, idx, valid, ReduceSum(ConvertDType(valid, dtypes.Int32), 1), 0.1, c.kernel).Out}
		}, tensors.FromShape(shapes.Make(dtypes.Float32, 2, c.m, 64)))
		if calls != c.want {
			t.Errorf("Paged=%v probed=%v kernel %d M=%d: %d paged calls, want %d", c.paged, c.probed, c.kernel, c.m, calls, c.want)
		}
	}
}

// kernelCallFn is the type of the embedded kernels' launch hooks (pagedCall, selectCall, scoresCall).
type kernelCallFn = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node

// checkProbe runs what every kernel family's probe must do, with its launch hook *call (restored afterwards): fail
// where the backend takes no custom calls, pass with the emulated kernels emu, fail with each broken kernel (broken
// maps a description to a change of the emulation's results, given the call's operands), and fail with a kernel
// whose compilation fails. It leaves *call = emu and pagedAvailable true.
func checkProbe(t *testing.T, probe func(compute.Backend) bool, call *kernelCallFn, emu kernelCallFn,
	broken map[string]func(ops, r []*Node) []*Node) {
	saveCall, saveAvail := *call, pagedAvailable
	t.Cleanup(func() { *call, pagedAvailable = saveCall, saveAvail })
	*call = emu
	pagedAvailable = func(*Graph) bool { return false }
	if probe(testBackend()) {
		t.Errorf("probe passed on a backend without custom calls")
	}
	pagedAvailable = func(*Graph) bool { return true }
	if !probe(testBackend()) {
		t.Errorf("probe failed with the emulated kernels")
	}
	for name, change := range broken {
		*call = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
			return change(ops, emu(cfg, programs, ops, outs))
		}
		if probe(testBackend()) {
			t.Errorf("probe passed with a kernel %s", name)
		}
	}
	*call = func(string, int, []*Node, []shapes.Shape) []*Node {
		panic(errors.New("custom call: cannot parse the kernel's bytecode")) // as a compilation failure surfaces
	}
	if probe(testBackend()) {
		t.Errorf("probe passed with a kernel that fails")
	}
	*call = emu
}

// TestProbePaged: the probe passes with a kernel that computes what SparseAttention does (the emulation), and
// fails where the backend has no kernel, where the kernel's results differ (for one or for four query rows a
// KV head), and where it cannot be compiled.
func TestProbePaged(t *testing.T) {
	emu := emulatePaged(t)
	checkProbe(t, probePaged, &pagedCall, emu, map[string]func(ops, r []*Node) []*Node{
		"whose outputs differ": func(_, r []*Node) []*Node { return []*Node{MulScalar(r[0], 1.1), r[1]} },
		"whose outputs differ for four query rows a KV head": func(ops, r []*Node) []*Node {
			if ops[0].Shape().Dimensions[1] > 1 { // the kernels for 2-8 rows differ from the one-row kernel
				return []*Node{MulScalar(r[0], 1.1), r[1]}
			}
			return r
		},
	})
	defer pagedProbed.Delete(testBackend())
	if !ProbePaged(testBackend()) {
		t.Fatalf("ProbePaged failed with the emulated kernel")
	}
	pagedCall = nil // the result is kept per backend: no second run
	if !ProbePaged(testBackend()) {
		t.Errorf("ProbePaged's second call differs")
	}
}

// TestSetPagedSplits: the benchmarks' override of the paged kernel's splits takes positive multiples of
// selectSlots/pagedRows, returns the previous value, and names a bad one.
func TestSetPagedSplits(t *testing.T) {
	old := SetPagedSplits(64)
	defer SetPagedSplits(old)
	if old != 32 || pagedSplits != 64 {
		t.Errorf("SetPagedSplits(64): previous %d, now %d", old, pagedSplits)
	}
	if ns, _, _ := pagedLayout(1<<16, selectSlots); ns != 64 {
		t.Errorf("pagedLayout with 64 splits: %d programs a head", ns)
	}
	for _, bad := range []int{0, -8, 12} {
		err := exceptions.TryCatch[error](func() { SetPagedSplits(bad) })
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(bad)) {
			t.Errorf("SetPagedSplits(%d): %v", bad, err)
		}
	}
	if pagedSplits != 64 {
		t.Errorf("a refused value changed the splits to %d", pagedSplits)
	}
}
