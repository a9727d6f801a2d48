package squeeze

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// selectCase is a random index: labels [H, S] (rows ≥ clustered are padding with arbitrary labels),
// cluster scores [H, K] and the counts that go with the labels.
type selectCase struct {
	h, s, k, clustered, window int
	labels                     []int32
	scores, counts             []float32
}

func newSelectCase(rng *rand.Rand, h, s, k, clustered, window int, distinct bool) selectCase {
	c := selectCase{h: h, s: s, k: k, clustered: clustered, window: window}
	c.labels = make([]int32, h*s)
	c.counts = make([]float32, h*k)
	for hh := range h {
		for i := range s {
			l := int32(rng.IntN(k))
			if hh == 0 && l == 3 {
				l = 4 // head 0 has an empty cluster
			}
			c.labels[hh*s+i] = l
			if i < clustered {
				c.counts[hh*k+int(l)]++
			}
		}
	}
	c.scores = make([]float32, h*k)
	for i := range c.scores {
		if distinct {
			c.scores[i] = rng.Float32() * 0.01
		} else {
			c.scores[i] = float32(rng.IntN(4)) * 0.001 // many clusters tie
		}
	}
	return c
}

func (c selectCase) tensors() (labels, scores, counts *tensors.Tensor) {
	return tensors.FromFlatDataAndDimensions(c.labels, c.h, c.s),
		tensors.FromFlatDataAndDimensions(c.scores, c.h, c.k),
		tensors.FromFlatDataAndDimensions(c.counts, c.h, c.k)
}

// normalize makes the scores estimated probabilities: Σ counts × scores = 1 per head.
func (c selectCase) normalize() {
	for hh := range c.h {
		tot := 0.0
		for j := range c.k {
			tot += float64(c.counts[hh*c.k+j] * c.scores[hh*c.k+j])
		}
		for j := range c.k {
			c.scores[hh*c.k+j] = float32(float64(c.scores[hh*c.k+j]) / tot)
		}
	}
}

// listMask turns an index list into a mask [H, S] counting how often each row is listed.
func listMask(idx, valid *Node, s int) *Node {
	g := idx.Graph()
	h, b := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
	heads := Iota(g, shapes.Make(dtypes.Int32, h, b, 1), 0)
	at := Concatenate([]*Node{heads, ExpandAxes(idx, -1)}, -1)
	return ScatterSum(Zeros(g, shapes.Make(dtypes.Int32, h, s)), at, ConvertDType(valid, dtypes.Int32), false, false)
}

// referenceMask is the engine's current per-key selection: BudgetMaskN over per-key scores, the window
// added (as llama's squeezedAttention does).
func referenceMask(scores, labels, budget, clustered, window *Node) *Node {
	g := scores.Graph()
	h, s := labels.Shape().Dimensions[0], labels.Shape().Dimensions[1]
	pos := Iota(g, shapes.Make(dtypes.Int32, h, s), 1)
	inC := LessThan(pos, BroadcastToDims(clustered, h, s))
	win := And(Not(inC), LessThan(pos, BroadcastToDims(Add(clustered, window), h, s)))
	ks := Where(inC, KeyScores(scores, labels), ZerosLike(ConvertDType(pos, dtypes.Float32)))
	return Or(And(BudgetMaskN(ks, budget), inC), win)
}

// TestSelectKeysMatchesBudgetMask: the cluster-level selection keeps exactly the keys of the per-key
// budget mask (distinct cluster scores), for both layouts (keys in position order with ClusterOrder's
// order, and keys stored sorted by cluster), and lists each once, window included.
func TestSelectKeysMatchesBudgetMask(t *testing.T) {
	const h, s, k, clustered, window = 3, 203, 17, 180, 20
	rng := rand.New(rand.NewPCG(11, 12))
	c := newSelectCase(rng, h, s, k, clustered, window, true)
	for _, tc := range []struct {
		budget, ways int
		search       Search
	}{{1, 0, 0}, {9, 0, 0}, {37, 0, 0}, {90, 0, 0}, {179, 0, 0}, {180, 0, 0}, {250, 0, 0},
		{1, 64, 0}, {37, 64, 0}, {90, 64, 0}, {180, 64, 0}, {250, 64, 0},
		{1, allPairs, 0}, {37, allPairs, 0}, {90, allPairs, 0}, {180, allPairs, 0}, {250, allPairs, 0},
		{1, 0, SearchSort}, {37, 0, SearchSort}, {180, 0, SearchSort}, {250, 0, SearchSort}} {
		budget := tc.budget
		t.Run(fmt.Sprintf("budget=%d/ways=%d/search=%d", budget, tc.ways, tc.search), func(t *testing.T) {
			testWays = tc.ways
			defer func() { testWays = 0 }()
			b := 64 * ((min(budget, clustered) + window + 63) / 64)
			labels, scores, counts := c.tensors()
			out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
				g := labels.Graph()
				bud, cl, win := Const(g, int32(budget)), Const(g, int32(clustered)), Const(g, int32(window))
				ref := ConvertDType(referenceMask(scores, labels, bud, cl, win), dtypes.Int32)
				order, starts := ClusterOrder(labels, counts, cl)
				idx, valid, kept, _ := selectKeys(scores, counts, starts, order, bud, cl, win, b, tc.search)
				got := listMask(idx, valid, s)
				// Sorted layout: row i holds key order[i]; its selection maps back through order.
				sIdx, sValid, _, _ := selectKeys(scores, counts, starts, nil, bud, cl, win, b, tc.search)
				sorted := listMask(takeAlong(order, sIdx), sValid, s)
				return []*Node{ref, got, sorted, kept, ConvertDType(valid, dtypes.Int32)}
			}, labels, scores, counts)
			ref := tensors.MustCopyFlatData[int32](out[0])
			got := tensors.MustCopyFlatData[int32](out[1])
			sorted := tensors.MustCopyFlatData[int32](out[2])
			kept := tensors.MustCopyFlatData[int32](out[3])
			valid := tensors.MustCopyFlatData[int32](out[4])
			want := min(budget, clustered) + window
			for hh := range h {
				if kept[hh] != int32(want) {
					t.Errorf("head %d: kept %d, want %d", hh, kept[hh], want)
				}
				for j := range b { // valid slots are a prefix
					if (valid[hh*b+j] == 1) != (j < want) {
						t.Fatalf("head %d: slot %d valid=%d with %d kept", hh, j, valid[hh*b+j], want)
					}
				}
			}
			if !slices.Equal(got, ref) {
				t.Errorf("position-order layout: selection differs from the budget mask\n got %v\nwant %v", got, ref)
			}
			if !slices.Equal(sorted, ref) {
				t.Errorf("sorted layout: selection differs from the budget mask")
			}
		})
	}
}

// TestSelectKeysTies: with clusters tied at the boundary score, exactly budget keys are kept, every key
// scoring above the boundary among them, and none below it.
func TestSelectKeysTies(t *testing.T) {
	const h, s, k, clustered, window = 2, 150, 23, 140, 10
	rng := rand.New(rand.NewPCG(13, 14))
	c := newSelectCase(rng, h, s, k, clustered, window, false)
	labels, scores, counts := c.tensors()
	for _, tc := range []struct {
		budget, ways int
		search       Search
	}{{5, 0, 0}, {33, 0, 0}, {70, 0, 0}, {139, 0, 0}, {5, allPairs, 0}, {33, allPairs, 0}, {70, allPairs, 0}, {139, allPairs, 0},
		{5, 0, SearchSort}, {33, 0, SearchSort}, {70, 0, SearchSort}, {139, 0, SearchSort}} {
		budget := tc.budget
		testWays = tc.ways
		out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
			g := labels.Graph()
			bud, cl, win := Const(g, int32(budget)), Const(g, int32(clustered)), Const(g, int32(window))
			order, starts := ClusterOrder(labels, counts, cl)
			idx, valid, _, _ := selectKeys(scores, counts, starts, order, bud, cl, win, 256, tc.search)
			return []*Node{listMask(idx, valid, s)}
		}, labels, scores, counts)
		testWays = 0
		got := tensors.MustCopyFlatData[int32](out[0])
		for hh := range h {
			// The budget-th largest key score.
			var ks []float32
			for i := range clustered {
				ks = append(ks, c.scores[hh*k+int(c.labels[hh*s+i])])
			}
			slices.Sort(ks)
			slices.Reverse(ks)
			bound := ks[budget-1]
			n := 0
			for i := range s {
				m := got[hh*s+i]
				if m > 1 {
					t.Fatalf("budget %d ways %d head %d: row %d listed %d times", budget, tc.ways, hh, i, m)
				}
				if i >= clustered {
					if (m == 1) != (i < clustered+window) {
						t.Errorf("budget %d head %d: window row %d kept=%d", budget, hh, i, m)
					}
					continue
				}
				sc := c.scores[hh*k+int(c.labels[hh*s+i])]
				switch {
				case sc > bound && m != 1:
					t.Errorf("budget %d head %d: row %d scores above the boundary but was dropped", budget, hh, i)
				case sc < bound && m != 0:
					t.Errorf("budget %d head %d: row %d scores below the boundary but was kept", budget, hh, i)
				}
				n += int(m)
			}
			if n != budget {
				t.Errorf("budget %d ways %d head %d: kept %d clustered keys", budget, tc.ways, hh, n)
			}
		}
	}
}

// TestSelectKeysThreshold: threshold mode keeps the keys of ThresholdMask, then the window; clusters that
// do not fit the list are dropped whole, never the window.
func TestSelectKeysThreshold(t *testing.T) {
	const h, s, k, clustered, window = 3, 203, 17, 180, 20
	rng := rand.New(rand.NewPCG(15, 16))
	c := newSelectCase(rng, h, s, k, clustered, window, true)
	labels, scores, counts := c.tensors()
	for _, thr := range []float32{-1, 0.002, 0.005, 0.009, 1} {
		out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
			g := labels.Graph()
			cl, win := Const(g, int32(clustered)), Const(g, int32(window))
			pos := Iota(g, shapes.Make(dtypes.Int32, h, s), 1)
			inC := LessThan(pos, BroadcastToDims(cl, h, s))
			w := And(Not(inC), LessThan(pos, BroadcastToDims(Add(cl, win), h, s)))
			ref := Or(And(ThresholdMask(KeyScores(scores, labels), Const(g, thr)), inC), w)
			order, starts := ClusterOrder(labels, counts, cl)
			idx, valid, kept := SelectKeysThreshold(scores, counts, starts, order, Const(g, thr), Const(g, int32(256-window)), cl, win, 256)
			return []*Node{ConvertDType(ref, dtypes.Int32), listMask(idx, valid, s), kept}
		}, labels, scores, counts)
		ref := tensors.MustCopyFlatData[int32](out[0])
		got := tensors.MustCopyFlatData[int32](out[1])
		if !slices.Equal(got, ref) {
			t.Errorf("threshold %g: selection differs from ThresholdMask", thr)
		}
		kept := tensors.MustCopyFlatData[int32](out[2])
		for hh := range h {
			n := int32(0)
			for i := range s {
				n += ref[hh*s+i]
			}
			if kept[hh] != n {
				t.Errorf("threshold %g head %d: kept %d, want %d", thr, hh, kept[hh], n)
			}
		}
	}
	// A list too short for every cluster above the threshold keeps the best of them (as the budget mask
	// does) and the whole window.
	const b = 64
	out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
		g := labels.Graph()
		cl, win, bud := Const(g, int32(clustered)), Const(g, int32(window)), Const(g, int32(b-window))
		thr := Const(g, float32(0.003))
		ref := And(referenceMask(scores, labels, bud, cl, win), Or(ThresholdMask(KeyScores(scores, labels), thr),
			Not(LessThan(Iota(g, shapes.Make(dtypes.Int32, h, s), 1), BroadcastToDims(cl, h, s)))))
		order, starts := ClusterOrder(labels, counts, cl)
		idx, valid, kept := SelectKeysThreshold(scores, counts, starts, order, thr, bud, cl, win, b)
		return []*Node{ConvertDType(ref, dtypes.Int32), listMask(idx, valid, s), kept}
	}, labels, scores, counts)
	ref := tensors.MustCopyFlatData[int32](out[0])
	got := tensors.MustCopyFlatData[int32](out[1])
	if !slices.Equal(got, ref) {
		t.Errorf("threshold with a full list: selection differs from threshold ∩ budget mask")
	}
	for hh := range h {
		if kept := tensors.MustCopyFlatData[int32](out[2]); kept[hh] != b {
			t.Errorf("head %d: kept %d in a %d-slot list", hh, kept[hh], b)
		}
	}
}

// TestClusterOrder: keys sorted by cluster, stable, padding rows last; starts are the runs' first slots.
func TestClusterOrder(t *testing.T) {
	labels := [][]int32{{2, 0, 2, 1, 0, 1, 1}, {1, 1, 1, 0, 0, 2, 2}}
	counts := [][]float32{{2, 1, 2}, {2, 3, 0}} // rows ≥ 5 are padding
	out := MustExecOnceN(testBackend(), func(g *Graph) []*Node {
		order, starts := ClusterOrder(Const(g, labels), Const(g, counts), Const(g, int32(5)))
		return []*Node{order, starts}
	})
	order := tensors.MustCopyFlatData[int32](out[0])
	starts := tensors.MustCopyFlatData[int32](out[1])
	if want := []int32{1, 4, 3, 0, 2, 5, 6, 3, 4, 0, 1, 2, 5, 6}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if want := []int32{0, 2, 3, 0, 2, 5}; !slices.Equal(starts, want) {
		t.Errorf("starts %v, want %v", starts, want)
	}
}

// TestBudgetBits: the count-weighted search finds the budget-th largest key score exactly, over the
// whole float range (tiny, huge, zero and infinite scores).
func TestBudgetBits(t *testing.T) {
	const h, k = 4, 50
	rng := rand.New(rand.NewPCG(17, 18))
	sc := make([]float32, h*k)
	cnt := make([]int32, h*k)
	for i := range sc {
		switch rng.IntN(6) {
		case 0:
			sc[i] = 0
		case 1:
			sc[i] = float32(math.Inf(1))
		case 2:
			sc[i] = rng.Float32() * 1e-38
		case 3:
			sc[i] = rng.Float32() * 1e30
		default:
			sc[i] = rng.Float32()
		}
		cnt[i] = int32(rng.IntN(5))
	}
	for _, tc := range []struct{ budget, ways int32 }{{1, 2}, {7, 2}, {40, 2}, {100, 2}, {1000, 2},
		{1, 64}, {7, 64}, {40, 64}, {100, 64}, {1000, 64}, {1, 256}, {40, 256}, {100, 256}, {1000, 256}, {40, 3},
		// ways 0 and -1: the all-pairs comparison and the sort (boundary's other searches)
		{1, 0}, {7, 0}, {40, 0}, {100, 0}, {1000, 0}, {1, -1}, {7, -1}, {40, -1}, {100, -1}, {1000, -1}} {
		budget := tc.budget
		out := MustExecOnceN(testBackend(), func(g *Graph) []*Node {
			bits, counts, bud := ScoreBits(Reshape(Const(g, sc), h, k)), Reshape(Const(g, cnt), h, k), Const(g, budget)
			switch tc.ways {
			case 0:
				return []*Node{boundary(bits, counts, bud, SearchAllPairs)}
			case -1:
				return []*Node{boundary(bits, counts, bud, SearchSort)}
			}
			return []*Node{budgetBits(bits, counts, bud, int(tc.ways))}
		})
		got := tensors.MustCopyFlatData[int32](out[0])
		for hh := range h {
			var keys []float32
			for j := range k {
				for range cnt[hh*k+j] {
					keys = append(keys, sc[hh*k+j])
				}
			}
			slices.Sort(keys)
			slices.Reverse(keys)
			want := int32(0)
			if int(budget) <= len(keys) {
				want = int32(math.Float32bits(keys[budget-1]))
			}
			if got[hh] != want {
				t.Errorf("budget %d, %d ways, head %d: bits %#x, want %#x", budget, tc.ways, hh, got[hh], want)
			}
		}
	}
}

// TestHalfPrecisionAttention: bfloat16 inputs take the half-precision products and stay close to the
// float32 result.
func TestHalfPrecisionAttention(t *testing.T) {
	const h, m, s, d, k = 2, 3, 40, 16, 5
	rng := rand.New(rand.NewPCG(19, 20))
	q, keys, vals, cent := randn(rng, 1, h, m, d), randn(rng, 1, h, s, d), randn(rng, 1, h, s, d), randn(rng, 1, h, k, d)
	counts := tensors.FromFlatDataAndDimensions([]float32{3, 0, 5, 1, 2, 4, 4, 4, 4, 4}, h, k)
	out := MustExecOnceN(testBackend(), func(q, keys, vals, cent, counts *Node) []*Node {
		bf := func(x *Node) *Node { return ConvertDType(x, dtypes.BFloat16) }
		a := DenseAttention(q, keys, vals, nil, Scale(d))
		b := DenseAttention(bf(q), bf(keys), bf(vals), nil, Scale(d))
		pa := ClusterScores(q, cent, counts, Scale(d))
		pb := ClusterScores(bf(q), bf(cent), counts, Scale(d))
		return []*Node{a.Out, b.Out, a.LSE, b.LSE, pa, pb}
	}, q, keys, vals, cent, counts)
	for i, tol := range []float64{0.03, 0.03, 0.05} {
		if d := maxAbsDiff(flat(out[2*i]), flat(out[2*i+1])); d > tol || math.IsNaN(d) {
			t.Errorf("output %d: bfloat16 differs from float32 by %.3g", i, d)
		}
	}
}

// TestSelectionCost compares, on the pure-Go backend, the per-key selection (BudgetMaskN over KeyScores,
// then Compact) with the cluster-level one (SelectKeys) for a 16K-key context of 8 KV heads. The CPU
// timing only shows the work removed; the GPU figures come from the llama attention benchmark.
func TestSelectionCost(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	const h, s, window = 8, 16384, 100
	clustered, k := s-window, s/20
	budget, b := clustered/10, 64*((clustered/10+window+63)/64)
	rng := rand.New(rand.NewPCG(21, 22))
	c := newSelectCase(rng, h, s, k, clustered, window, true)
	labels, scores, counts := c.tensors()
	perKey := MustNewExec(testBackend(), func(labels, scores, counts *Node) []*Node {
		g := labels.Graph()
		bud, cl, win := Const(g, int32(budget)), Const(g, int32(clustered)), Const(g, int32(window))
		idx, valid, _ := Compact(referenceMask(scores, labels, bud, cl, win), b)
		return []*Node{idx, valid}
	})
	var order, starts *tensors.Tensor
	{
		out := MustExecOnceN(testBackend(), func(labels, counts *Node) []*Node {
			o, st := ClusterOrder(labels, counts, Const(labels.Graph(), int32(clustered)))
			return []*Node{o, st}
		}, labels, counts)
		order, starts = out[0], out[1]
	}
	perCluster := MustNewExec(testBackend(), func(scores, counts, starts, order *Node) []*Node {
		g := scores.Graph()
		bud, cl, win := Const(g, int32(budget)), Const(g, int32(clustered)), Const(g, int32(window))
		idx, valid, _ := SelectKeys(scores, counts, starts, order, bud, cl, win, b)
		return []*Node{idx, valid}
	})
	timeIt := func(f func()) time.Duration {
		f() // compile
		best := time.Duration(math.MaxInt64)
		for range 3 {
			t0 := time.Now()
			f()
			best = min(best, time.Since(t0))
		}
		return best
	}
	a := timeIt(func() { perKey.MustExec(labels, scores, counts) })
	bt := timeIt(func() { perCluster.MustExec(scores, counts, starts, order) })
	t.Logf("selection of %d of %d keys × %d heads (%d clusters) on the pure-Go backend: per key (BudgetMaskN + Compact) %v, "+
		"per cluster (SelectKeys) %v", budget, clustered, h, k, a, bt)
}

// TestSelectKeysMass: the attention-mass selection keeps, per head, the clusters in decreasing order of
// score until their mass (count × score) reaches the target, every cluster tied with the last one needed,
// and the window; checked against a host computation, for both boundary searches, with distinct and
// tied scores.
func TestSelectKeysMass(t *testing.T) {
	const h, s, k, clustered, window = 3, 203, 17, 180, 20
	for _, distinct := range []bool{true, false} {
		rng := rand.New(rand.NewPCG(25, 26))
		c := newSelectCase(rng, h, s, k, clustered, window, distinct)
		c.normalize()
		labels, scores, counts := c.tensors()
		for _, ways := range []int{2, allPairs} {
			for _, target := range []float32{1e-4, 0.3, 0.7, 0.95, 1.5} {
				testWays = ways
				out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
					g := labels.Graph()
					cl, win := Const(g, int32(clustered)), Const(g, int32(window))
					order, starts := ClusterOrder(labels, counts, cl)
					idx, valid, kept := SelectKeysMass(scores, counts, starts, order, Const(g, target), Const(g, int32(256-window)), cl, win, 256)
					return []*Node{listMask(idx, valid, s), kept}
				}, labels, scores, counts)
				testWays = 0
				got := tensors.MustCopyFlatData[int32](out[0])
				kept := tensors.MustCopyFlatData[int32](out[1])
				for hh := range h {
					// Host: the smallest score lo among the clusters needed in decreasing order.
					sc := c.scores[hh*k : (hh+1)*k]
					ids := make([]int, k)
					for j := range ids {
						ids[j] = j
					}
					slices.SortFunc(ids, func(a, b int) int { return cmp.Compare(sc[b], sc[a]) })
					lo, cum := float32(0), 0.0
					for _, j := range ids {
						cum += float64(c.counts[hh*k+j] * sc[j])
						if cum >= float64(target) {
							lo = sc[j]
							break
						}
					}
					n := int32(0)
					for i := range s {
						want := int32(0)
						if i < clustered && sc[c.labels[hh*s+i]] >= lo || i >= clustered && i < clustered+window {
							want = 1
						}
						n += want
						if got[hh*s+i] != want {
							t.Errorf("distinct %v ways %d target %g head %d row %d: listed %d times, want %d",
								distinct, ways, target, hh, i, got[hh*s+i], want)
							break
						}
					}
					if kept[hh] != n {
						t.Errorf("distinct %v ways %d target %g head %d: kept %d, want %d", distinct, ways, target, hh, kept[hh], n)
					}
				}
			}
		}
	}
}

// TestMassKeptCurve: the calibration curve counts, for every target, the keys SelectKeysMass keeps (with
// distinct scores, where the two agree exactly).
func TestMassKeptCurve(t *testing.T) {
	const h, s, k, clustered, window = 4, 203, 17, 180, 20
	rng := rand.New(rand.NewPCG(27, 28))
	c := newSelectCase(rng, h, s, k, clustered, window, true)
	c.normalize()
	labels, scores, counts := c.tensors()
	targets := []float32{0, 1e-3, 0.2, 0.5, 0.8, 0.99, 2}
	out := MustExecOnceN(testBackend(), func(labels, scores, counts *Node) []*Node {
		g := labels.Graph()
		cl, win := Const(g, int32(clustered)), Const(g, int32(window))
		order, starts := ClusterOrder(labels, counts, cl)
		res := []*Node{MassKeptCurve(scores, counts, Const(g, targets))}
		for _, x := range targets {
			_, _, kept := SelectKeysMass(scores, counts, starts, order, Const(g, x), Const(g, int32(256-window)), cl, win, 256)
			res = append(res, kept)
		}
		return res
	}, labels, scores, counts)
	curve := tensors.MustCopyFlatData[int32](out[0]) // [H, T]
	for j, x := range targets {
		kept := tensors.MustCopyFlatData[int32](out[1+j])
		for hh := range h {
			if got, want := curve[hh*len(targets)+j], kept[hh]-window; got != want {
				t.Errorf("target %g head %d: curve says %d keys, SelectKeysMass keeps %d", x, hh, got, want)
			}
		}
	}
	if curve[0] != 0 || curve[1] <= 0 || curve[len(targets)-1] != clustered {
		t.Errorf("head 0: targets 0, 1e-3 and 2 keep %d, %d and %d keys (want none, the best cluster's, all %d)",
			curve[0], curve[1], curve[len(targets)-1], clustered)
	}
}
