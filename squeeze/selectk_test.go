package squeeze

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// emulateSelect is the selection kernels' contract (scripts/gpu/pallas_select.py, make_select_a and
// make_select_b) in graph ops, for the pure-Go backend; see selectk.go for the operands and outputs. It
// identifies the embedded config it is launched with (kernel A or B, Kp, layout) and checks the operands
// and the launch against it.
func emulateSelect(t *testing.T) func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
	return func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
		kind, kp, sortedLayout := "", 0, false
		for p := 256; p <= selectMaxKp; p *= 2 {
			for _, l := range []bool{false, true} {
				a, b := selectConfigs(p, l)
				switch cfg {
				case a: // the embedded config as it is (selectCall sets the launch grid)
					kind, kp = "a", p
				case b:
					kind, kp, sortedLayout = "b", p, l
				case lookupConfig(p):
					kind, kp = "s", p
				}
			}
		}
		for i, x := range ops {
			if want := selectOperandDType(kind, i); x.DType() != want {
				t.Errorf("selection kernel %s: operand %d of dtype %s, not %s", kind, i, x.DType(), want)
			}
		}
		g := ops[0].Graph()
		i32 := dtypes.Int32
		switch kind {
		case "a":
			h := programs
			if len(ops) != 3 || ops[0].Shape().Dimensions[0] != h*kp || len(outs) != 3 || outs[2].Dimensions[0] != h {
				t.Errorf("kernel A (Kp %d): %d operands, %d programs, operand %s", kp, len(ops), programs, ops[0].Shape())
			}
			budget := BroadcastToDims(Slice(ops[2], AxisElem(0)), h, 1)
			return emulateKernelA(Reshape(ops[0], h, kp), Reshape(ops[1], h, kp), budget)
		case "s":
			// The lookup kernel: ClusterScores from the logits (K and M from prm; the operands' sizes must agree),
			// the threshold mode, kernel A, the starts padded.
			h := programs
			if len(ops) != 5 || len(outs) != 4 || outs[0].Dimensions[0] != h*kp || outs[2].Dimensions[0] != h {
				t.Errorf("lookup kernel (Kp %d): %d operands, %d outputs, %d programs", kp, len(ops), len(outs), programs)
			}
			k := ops[1].Shape().Dimensions[0] / h
			m := ops[0].Shape().Dimensions[0] / (h * k)
			prm := func(i int) *Node { return Reshape(Slice(ops[4], AxisElem(i))) }
			bad := Or(NotEqual(prm(1), Const(g, int32(k))), NotEqual(prm(2), Const(g, int32(m))))
			// fprm = [threshold, scale]: the kernel scales the logits.
			logits := Mul(Reshape(ops[0], h, m, k), BroadcastToDims(Reshape(Slice(ops[3], AxisElem(1)), 1, 1, 1), h, m, k))
			counts := Reshape(ops[1], h, k)
			scores := clusterScoresFromLogits(logits, counts)
			pad := func(x *Node) *Node { return Concatenate([]*Node{x, Zeros(g, shapes.Make(x.DType(), h, kp-k))}, 1) }
			cnt := ConvertDType(counts, i32)
			thrMode := Equal(prm(3), Const(g, int32(1)))
			drop := And(BroadcastToDims(thrMode, h, k), Not(GreaterThan(scores, BroadcastToDims(Reshape(Slice(ops[3], AxisElem(0))), h, k))))
			cnt = Where(drop, ZerosLike(cnt), cnt)
			budget := BroadcastToDims(Reshape(prm(0), 1, 1), h, 1)
			r := emulateKernelA(pad(ScoreBits(scores)), pad(cnt), budget)
			// A launch whose sizes disagree with prm: every head's total -7.
			r[2] = Where(BroadcastToDims(bad, h), BroadcastToDims(Const(g, int32(-7)), h), r[2])
			return append(r, Reshape(pad(Reshape(ops[2], h, k)), h*kp))
		case "b":
			if len(ops) != 6 || len(outs) != 1 {
				t.Errorf("kernel B: %d operands, %d outputs", len(ops), len(outs))
			}
			ends, w, starts, total, order, prm := ops[0], ops[1], ops[2], ops[3], ops[4], ops[5]
			h := total.Shape().Dimensions[0]
			nt := programs / h
			bp := nt * selectSlots
			if programs%h != 0 || outs[0].Dimensions[0] != h*bp || ends.Shape().Dimensions[0] != h*kp {
				t.Errorf("kernel B (Kp %d): %d programs for %d heads, output %s", kp, programs, h, outs[0])
			}
			if sortedLayout != (order.Shape().Dimensions[0] == 1) {
				t.Errorf("kernel B for the %v layout given an order of %s", map[bool]string{true: "sorted", false: "order"}[sortedLayout], order.Shape())
			}
			p := func(i int) *Node { return Slice(prm, AxisElem(i)) } // [1]
			sRows, clustered, window, bMax := p(0), p(1), p(2), p(3)
			// The slot count and programs a head the kernel reads at run time must match the launch.
			bad := Or(NotEqual(p(4), Const(g, []int32{int32(bp)})), NotEqual(p(5), Const(g, []int32{int32(nt)})))
			endsH, wH, startsH := Reshape(ends, h, kp), Reshape(w, h, kp), Reshape(starts, h, kp)
			slot := Iota(g, shapes.Make(i32, h, bp), 1)
			c := MinScalar(searchRight(endsH, slot), kp-1)
			first := Sub(takeAlong(endsH, c), takeAlong(wH, c))
			row := Add(takeAlong(startsH, c), Sub(slot, first))
			sB := BroadcastToDims(sRows, h, bp)
			hs := Mul(Iota(g, shapes.Make(i32, h, bp), 0), sB)
			if !sortedLayout {
				row = Gather(order, ExpandAxes(Add(hs, Clamp(Scalar(g, i32, 0), row, AddScalar(sB, -1))), -1))
			}
			tot := BroadcastToDims(Reshape(total, h, 1), h, bp)
			kept := Min(Add(tot, BroadcastToDims(window, h, bp)), BroadcastToDims(bMax, h, bp))
			row = Where(LessThan(slot, tot), row, Add(BroadcastToDims(clustered, h, bp), Sub(slot, tot)))
			gidx := Where(LessThan(slot, kept), Add(hs, row), Scalar(g, i32, -1))
			gidx = Where(BroadcastToDims(Reshape(bad, 1, 1), h, bp), Scalar(g, i32, -7), gidx)
			return []*Node{Reshape(gidx, h*bp)}
		}
		t.Errorf("selection kernel launched with an unknown config %.60q…", cfg)
		return []*Node{Zeros(ops[0].Graph(), outs[0])}
	}
}

// selectOperandDType is the dtype of operand i of selection kernel kind ("a", "b" or "s", the lookup kernel).
func selectOperandDType(kind string, i int) dtypes.DType {
	if kind == "s" && (i == 0 || i == 1 || i == 3) {
		return dtypes.Float32
	}
	return dtypes.Int32
}

// emulateKernelA is kernel A on bits and counts [H, Kp] int32 and budget [H, 1]: the boundary by bisection over
// [0, MAXBITS] (the largest lo with Σ counts[bits ≥ lo] ≥ budget), then ends, w [H·Kp] and total [H].
func emulateKernelA(bitsN, cnt, budget *Node) []*Node {
	g := bitsN.Graph()
	i32 := dtypes.Int32
	h, kp := bitsN.Shape().Dimensions[0], bitsN.Shape().Dimensions[1]
	lo := Zeros(g, shapes.Make(i32, h, 1))
	hi := BroadcastToDims(Scalar(g, i32, maxScoreBits), h, 1)
	for range 31 {
		mid := Add(lo, DivScalar(AddScalar(Sub(hi, lo), 1), 2))
		n := ReduceAndKeep(Where(GreaterOrEqual(bitsN, BroadcastToDims(mid, h, kp)), cnt, ZerosLike(cnt)), ReduceSum, 1)
		ok := GreaterOrEqual(n, budget)
		lo, hi = Where(ok, mid, lo), Where(ok, hi, AddScalar(mid, -1))
	}
	loB := BroadcastToDims(lo, h, kp)
	strict := Where(GreaterThan(bitsN, loB), cnt, ZerosLike(cnt))
	ties := Where(Equal(bitsN, loB), cnt, ZerosLike(cnt))
	room := MaxScalar(Sub(budget, ReduceAndKeep(strict, ReduceSum, 1)), 0)
	before := Sub(CumSum(ties, 1), ties)
	w := Add(strict, Min(MaxScalar(Sub(BroadcastToDims(room, h, kp), before), 0), ties))
	return []*Node{Reshape(CumSum(w, 1), h*kp), Reshape(w, h*kp), ReduceSum(w, 1)}
}

// withSelectKernels installs the emulated kernels (and the emulated paged kernel) for a test.
func withSelectKernels(t *testing.T, mode SelectMode, paged PagedMode) {
	saveSel, savePaged, saveAvail, saveSM, savePM := selectCall, pagedCall, pagedAvailable, SelectKernels, Paged
	t.Cleanup(func() {
		selectCall, pagedCall, pagedAvailable, SelectKernels, Paged = saveSel, savePaged, saveAvail, saveSM, savePM
	})
	selectCall, pagedCall, pagedAvailable = emulateSelect(t), emulatePaged(t), func(*Graph) bool { return true }
	SelectKernels, Paged = mode, paged
}

// TestSelectKernelList: the selection kernels' list (emulated) keeps the keys selectKeys keeps, with the same
// kept and taken counts: distinct and tied scores, budgets from a few keys to above the total, both layouts,
// lists cut short of budget + window, numbers of clusters from 17 (padded to 256) to 1,100 (2,048).
func TestSelectKernelList(t *testing.T) {
	withSelectKernels(t, SelectOn, PagedOff)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, c := range []struct {
		h, s, k, clustered, window int
		distinct                   bool
		budget, b                  int
	}{{3, 203, 17, 180, 20, true, 40, 64}, {2, 150, 23, 140, 10, false, 33, 64}, {2, 150, 23, 140, 10, false, 139, 192},
		{3, 203, 17, 180, 20, false, 500, 320}, {2, 300, 40, 280, 12, false, 100, 100}, {2, 3000, 1100, 2900, 50, false, 700, 800}} {
		sc := newSelectCase(rng, c.h, c.s, c.k, c.clustered, c.window, c.distinct)
		labels, scores, counts := sc.tensors()
		for _, sorted := range []bool{false, true} {
			name := fmt.Sprintf("K%d_budget%d_B%d_sorted%v", c.k, c.budget, c.b, sorted)
			bp := (c.b + selectSlots - 1) / selectSlots * selectSlots
			out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
				g := labels.Graph()
				bud, cl, win := Const(g, int32(c.budget)), Const(g, int32(c.clustered)), Const(g, int32(c.window))
				order, starts := ClusterOrder(labels, counts, cl)
				if sorted {
					order = nil
				}
				idx, valid, kept, taken := selectKeys(scores, counts, starts, order, bud, cl, win, c.b, SearchPasses)
				gidx, kk, tk := selectKernelList(ScoreBits(scores), counts, starts, order, bud, cl, win, c.b, c.s, bp)
				ki, kv := listToIdx(gidx, c.h, c.s, c.b)
				rows := Reshape(gidx, c.h, bp)
				// Slots past b are empty; a listed row lies in its head's block.
				outside := Or(And(GreaterOrEqual(rows, ZerosLike(rows)), LessThan(Iota(g, shapes.Make(dtypes.Int32, c.h, bp), 1), Scalar(g, dtypes.Int32, c.b))), LessThan(rows, ZerosLike(rows)))
				return []*Node{listDiff(idx, valid, ki, kv, c.s), kept, kk, taken, tk, ReduceAllSum(ConvertDType(Not(outside), dtypes.Int32)),
					ReduceAllSum(ConvertDType(kv, dtypes.Int32))}
			}, labels, scores, counts)
			if d := out[0].Value().(int32); d != 0 {
				t.Errorf("%s: the kernels' list differs from selectKeys' in %d slots", name, d)
			}
			if a, b := flatI32(out[1]), flatI32(out[2]); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("%s: kept %v, selectKeys %v", name, b, a)
			}
			if a, b := flatI32(out[3]), flatI32(out[4]); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("%s: taken counts differ from selectKeys'", name)
			}
			if n := out[5].Value().(int32); n != 0 {
				t.Errorf("%s: %d slots at or past B=%d hold a row", name, n, c.b)
			}
			if n := out[6].Value().(int32); n == 0 {
				t.Errorf("%s: empty lists", name)
			}
		}
	}
}

// TestAttendSelectedKernels: AttendSelected through the selection kernels (emulated) gives the same partial as
// through XLA's selection, for a decode step into the paged kernel (the list handed over as it is), for a step
// of more query rows (the list turned back into idx/valid for the gathers), in budget, threshold and mass modes,
// with the remainder, and over a hierarchical index; the kept counts are the same. With the lookup kernel on, decode
// steps of a flat index in budget and threshold mode (1, 3 and 8 query rows a KV head) take it instead of kernel A
// and give the same partial; the other steps (mass, remainder, hierarchical, 9 rows or more) do not take it.
func TestAttendSelectedKernels(t *testing.T) {
	const h, s, d, k, clustered, window = 2, 400, 64, 24, 380, 12
	rng := rand.New(rand.NewPCG(23, 24))
	keys, vals := randn(rng, 1, h, s, d), randn(rng, 1, h, s, d)
	for _, c := range []struct {
		name string
		m    int
		mode string
		hier bool
	}{{"decode-budget", 1, "budget", false}, {"decode-threshold", 1, "threshold", false}, {"decode-mass", 1, "mass", false},
		{"decode-remainder", 1, "remainder", false}, {"input-budget", 80, "budget", false}, {"decode-hier", 1, "budget", true},
		{"input-hier", 70, "budget", true}, {"decode-g3-budget", 3, "budget", false}, {"decode-g8-threshold", 8, "threshold", false},
		{"input-g9-budget", 9, "budget", false}} {
		t.Run(c.name, func(t *testing.T) {
			q := randn(rng, 2, h, c.m, d)
			run := func(mode, lookup SelectMode) []*tensors.Tensor {
				withSelectKernels(t, mode, PagedOn)
				calls, lookups := 0, 0
				emu := selectCall
				selectCall = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
					calls++
					if len(ops) == 5 {
						lookups++
					}
					return emu(cfg, programs, ops, outs)
				}
				out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
					g := q.Graph()
					bf := dtypes.BFloat16
					kb, vb := ConvertDType(keys, bf), ConvertDType(vals, bf)
					qf := ConvertDType(ConvertDType(q, bf), dtypes.Float32)
					ix := attendTestIndex(kb, vb, clustered, window, k, c.hier, c.mode == "remainder")
					switch c.mode {
					case "threshold":
						ix.Threshold = Const(g, float32(2.5/float32(clustered))) // binds: fewer keys pass than the budget
					case "mass":
						ix.Threshold, ix.Mass = Const(g, float32(0.6)), true
					}
					ix.Lookup = lookup
					p, kept := AttendSelected(qf, kb, vb, ix, Scale(d), KernelAuto)
					return []*Node{p.Out, p.LSE, kept}
				}, q, keys, vals)
				if want := map[bool]int{true: 2, false: 0}[mode == SelectOn]; calls != want {
					t.Errorf("SelectKernels=%v: %d selection kernel calls, want %d", mode, calls, want)
				}
				// The lookup kernel replaces kernel A for a flat index's decode step in budget or threshold mode.
				wantLookup := mode == SelectOn && lookup == SelectOn && c.m <= LookupMaxQueries && !c.hier &&
					(c.mode == "budget" || c.mode == "threshold")
				if want := map[bool]int{true: 1, false: 0}[wantLookup]; lookups != want {
					t.Errorf("SelectKernels=%v Lookup=%v: %d lookup kernel calls, want %d", mode, lookup, lookups, want)
				}
				return out
			}
			xla := run(SelectOff, SelectOff)
			for _, lookup := range []SelectMode{SelectOff, SelectOn} {
				kern := run(SelectOn, lookup)
				allFinite(t, "output", flat(kern[0]))
				if diff := maxAbsDiff(flat(xla[0]), flat(kern[0])); diff > 1e-5 {
					t.Errorf("Lookup=%v: output differs from XLA's selection by %.2e", lookup, diff)
				}
				if diff := maxAbsDiff(flat(xla[1]), flat(kern[1])); diff > 1e-5 {
					t.Errorf("Lookup=%v: log-sum-exp differs from XLA's selection by %.2e", lookup, diff)
				}
				if a, b := flatI32(xla[2]), flatI32(kern[2]); fmt.Sprint(a) != fmt.Sprint(b) {
					t.Errorf("Lookup=%v: kept %v with the kernels, %v with XLA", lookup, b, a)
				}
			}
		})
	}
}

// attendTestIndex is the index the AttendSelected tests select from, over bfloat16 keys kb and values vb [H, S, D]:
// a hierarchical one (4 coarse clusters, 12 fine slots) or a flat one of k clusters, with the remainder's means when
// asked; budget 90 keys, a list of 128 slots.
func attendTestIndex(kb, vb *Node, clustered, window, k int, hier, remainder bool) LayerIndex {
	g := kb.Graph()
	var ix LayerIndex
	if hier {
		_, ix, _ = hierIndex(ConvertDType(kb, dtypes.Float32), clustered, window, k, 4, 4, 12)
	} else {
		cl := Const(g, int32(clustered))
		cent, lab, cnt := KMeansMasked(ConvertDType(kb, dtypes.Float32), cl, k, 5)
		ix.Centroids, ix.Counts = cent, cnt
		ix.Order, ix.Starts = ClusterOrder(lab, cnt, cl)
		if remainder {
			ix.Means = ClusterMeans(ConvertDType(vb, dtypes.Float32), lab, cnt, cl)
		}
	}
	ix.Clustered, ix.Window, ix.Budget, ix.MaxKept = Const(g, int32(clustered)), Const(g, int32(window)), Const(g, int32(90)), 128
	return ix
}

// TestProbeSelect: the probe passes with kernels that compute what selectKeys does (the emulation), and fails
// where the backend has no kernels, where kernel B misplaces a row, and where a kernel cannot be compiled; the
// result is kept per backend; under SelectAuto the kernels run only once the probe passed.
func TestProbeSelect(t *testing.T) {
	withSelectKernels(t, SelectAuto, PagedOff)
	emu := selectCall
	checkProbe(t, probeSelect, &selectCall, emu, map[string]func(ops, r []*Node) []*Node{
		"that misplaces rows": func(ops, r []*Node) []*Node {
			if len(ops) == 6 { // kernel B: the first slot of each program one row off
				g := r[0].Graph()
				n := r[0].Shape().Dimensions[0]
				first := Equal(ModScalar(Iota(g, shapes.Make(dtypes.Int32, n), 0), selectSlots), Scalar(g, dtypes.Int32, 0))
				return []*Node{Where(And(first, GreaterThan(r[0], ZerosLike(r[0]))), AddScalar(r[0], -1), r[0])}
			}
			return r
		},
	})
	defer selectProbed.Delete(testBackend())
	if !ProbeSelect(testBackend()) {
		t.Fatalf("ProbeSelect failed with the emulated kernels")
	}
	selectCall = nil
	if !ProbeSelect(testBackend()) {
		t.Errorf("ProbeSelect's second call differs")
	}
	selectCall = emu
	for _, probed := range []bool{false, true} {
		selectProbed.Store(testBackend(), probed)
		var got bool
		MustExecOnceN(testBackend(), func(x *Node) []*Node {
			got = useSelectKernels(x.Graph(), 1638, false, SelectAuto)
			return []*Node{x}
		}, tensors.FromValue(int32(1)))
		if got != probed {
			t.Errorf("SelectAuto with a probe result %v: kernels used = %v", probed, got)
		}
	}
}

// TestSelectKernelConfigs: every embedded selection config loads, launches with any grid, and kernel B's
// configs differ by layout; there is none past selectMaxKp.
func TestSelectKernelConfigs(t *testing.T) {
	for kp := 256; kp <= selectMaxKp; kp *= 2 {
		for _, l := range []bool{false, true} {
			a, b := selectConfigs(kp-1, l)
			if a == "" || b == "" {
				t.Fatalf("Kp %d sorted=%v: no embedded config", kp, l)
			}
			if got := pagedBackendConfig(b, 999); !strings.Contains(got, "grid_x = 999 : i32") || strings.Count(got, "grid_x") != 1 {
				t.Errorf("Kp %d: launch config %.60q…", kp, got)
			}
		}
		_, bo := selectConfigs(kp, false)
		_, bs := selectConfigs(kp, true)
		if bo == bs {
			t.Errorf("Kp %d: the two layouts' kernel B configs are the same", kp)
		}
		if selectKp(kp) != kp || selectKp(kp/2+1) != kp || bits.OnesCount(uint(kp)) != 1 {
			t.Errorf("selectKp(%d) = %d", kp, selectKp(kp))
		}
	}
	if a, b := selectConfigs(selectMaxKp+1, false); a != "" || b != "" || selectKp(20000) != 0 {
		t.Errorf("a kernel past %d clusters", selectMaxKp)
	}
	// The paged layout: the fewest tiles a program that pagedSplits programs need, then the fewest programs whose
	// slots hold the list in a multiple of the alignment (kernel B writes 256 slots a program).
	for _, c := range []struct{ b, align, ns, iters int }{{1, selectSlots, 8, 1}, {70, selectSlots, 8, 1}, {256, selectSlots, 8, 1},
		{1000, selectSlots, 32, 1}, {1025, selectSlots, 20, 2}, {3392, selectSlots, 28, 4}, {13248, selectSlots, 32, 13},
		{1, pagedRows, 1, 1}, {1025, pagedRows, 17, 2}, {3392, pagedRows, 27, 4}} {
		ns, iters, bp := pagedLayout(c.b, c.align)
		if ns != c.ns || iters != c.iters || bp != ns*iters*pagedRows || bp%c.align != 0 || bp < c.b {
			t.Errorf("pagedLayout(%d, %d) = %d, %d, %d; want %d programs of %d tiles", c.b, c.align, ns, iters, bp, c.ns, c.iters)
		}
	}
}
