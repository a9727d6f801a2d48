package squeeze

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

func flatI32(t *tensors.Tensor) []int32 { return tensors.MustCopyFlatData[int32](t) }

// hierIndex is LayerIndex of a two-level index built in the graph; flat is the same fine level
// without the coarse one.
func hierIndex(keys *Node, clustered, window, k, k1, iters, slots int) (hi Hierarchy, hier, flatIx LayerIndex) {
	g := keys.Graph()
	cl := Const(g, int32(clustered))
	hi = KMeansHierarchical(keys, cl, k, k1, iters)
	order, starts := ClusterOrder(hi.Labels, hi.Counts, cl)
	flatIx = LayerIndex{Centroids: hi.Centroids, Counts: hi.Counts, Starts: starts, Order: order, Clustered: cl,
		Window: Const(g, int32(window))}
	hier = flatIx
	hier.CoarseCentroids, hier.CoarseCounts, hier.CoarseChildren, hier.FineSlots = hi.CoarseCentroids, hi.CoarseCounts, hi.Children, slots
	return hi, hier, flatIx
}

// TestHierarchicalKeepAllEqualsFlat: when the fine slots hold every fine cluster (coarse keep fraction
// 1), the hierarchical lookup scores exactly what the flat one does, and the selection (budget and
// threshold modes, keys in position order or sorted by cluster) is the flat one: same idx, valid, kept.
// The keys have exact duplicates, so some fine clusters are empty.
func TestHierarchicalKeepAllEqualsFlat(t *testing.T) {
	const h, s, clustered, window, d, m, k, k1 = 2, 200, 170, 12, 16, 6, 24, 5
	rng := rand.New(rand.NewPCG(31, 32))
	kv := make([]float32, h*s*d)
	for i := range h * s {
		kv[i*d+(i*5)%7] = 2 // every other key is one of 7 exact directions (duplicates leave clusters empty)
		if i%2 == 1 {
			for j := range d {
				kv[i*d+j] += float32(rng.NormFloat64()) * 0.5
			}
		}
	}
	keys, q := tensorOf(kv, h, s, d), randn(rng, 1, h, m, d)
	for _, tc := range []struct {
		budget    int
		threshold float32 // < 0: budget mode
		sorted    bool
	}{{5, -1, false}, {40, -1, false}, {100, -1, true}, {170, -1, false}, {300, -1, true},
		{150, 0.002, false}, {150, 0.01, true}, {30, 0.005, false}} {
		name := fmt.Sprintf("budget=%d/threshold=%g/sorted=%v", tc.budget, tc.threshold, tc.sorted)
		t.Run(name, func(t *testing.T) {
			out := MustExecOnceN(testBackend(), func(keys, q *Node) []*Node {
				g := keys.Graph()
				hi, hier, fl := hierIndex(keys, clustered, window, k, k1, 4, k)
				for _, ix := range []*LayerIndex{&hier, &fl} {
					ix.Budget, ix.MaxKept = Const(g, int32(tc.budget)), 64*((min(tc.budget, clustered)+window+63)/64)
					if tc.threshold >= 0 {
						ix.Threshold = Const(g, tc.threshold)
					}
					if tc.sorted {
						ix.Order = nil
					}
				}
				hIdx, hValid, hKept := Select(q, hier, Scale(d))
				fIdx, fValid, fKept := Select(q, fl, Scale(d))
				return []*Node{hIdx, ConvertDType(hValid, dtypes.Int32), hKept, fIdx, ConvertDType(fValid, dtypes.Int32), fKept,
					HierarchicalClusterScores(q, hier, Scale(d)), ClusterScores(q, fl.Centroids, fl.Counts, Scale(d)), hi.Counts}
			}, keys, q)
			for i, name := range []string{"idx", "valid", "kept"} {
				if got, want := flatI32(out[i]), flatI32(out[i+3]); !slices.Equal(got, want) {
					t.Errorf("%s differs from the flat selection:\n got %v\nwant %v", name, got, want)
				}
			}
			hs, fs, counts := flat(out[6]), flat(out[7]), flat(out[8])
			empty := 0
			for j, n := range counts {
				switch {
				case n == 0:
					empty++
					if !math.IsInf(float64(hs[j]), -1) {
						t.Errorf("empty fine cluster %d scored %g", j, hs[j])
					}
				case hs[j] != fs[j]:
					t.Errorf("fine cluster %d: hierarchical score %g, flat %g", j, hs[j], fs[j])
				}
			}
			if empty == 0 {
				t.Fatal("the test needs empty fine clusters")
			}
		})
	}
}

// TestHierarchicalPlantedNeedle: four keys of each head point where its query does. With half of the
// fine clusters scored, the needle's coarse cluster survives and its keys are kept; the coarse clusters
// beyond the slots get no scores (-Inf) and none of their keys is kept, even with a budget larger than
// the scored keys (the kept count is then exactly the scored clusters' keys); the attention output stays
// close to dense.
func TestHierarchicalPlantedNeedle(t *testing.T) {
	const h, s, d, k, k1, slots, budget = 2, 256, 16, 16, 4, 8, 200
	rng := rand.New(rand.NewPCG(33, 34))
	kv := flat(randn(rng, 0.3, h, s, d))
	needle := []int{96, 97, 98, 99} // key 96 seeds fine cluster 6
	qv := make([]float32, h*d)
	for hh := range h {
		for _, n := range needle {
			for j := range d {
				kv[(hh*s+n)*d+j] = 0
			}
			kv[(hh*s+n)*d+8+hh] = 6
		}
		qv[hh*d+8+hh] = 6
	}
	keys, q, vals := tensorOf(kv, h, s, d), tensorOf(qv, h, 1, d), randn(rng, 1, h, s, d)
	out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
		g := q.Graph()
		hi, ix, _ := hierIndex(keys, s, 0, k, k1, 6, slots)
		ix.Budget, ix.MaxKept = Const(g, int32(budget)), 256
		idx, valid, kept := Select(q, ix, Scale(d))
		sq := AttendKept(q, keys, vals, idx, valid, kept, Scale(d), KernelEinsum)
		ref := DenseAttention(q, keys, vals, nil, Scale(d))
		return []*Node{HierarchicalClusterScores(q, ix, Scale(d)), ClusterScores(q, hi.CoarseCentroids, hi.CoarseCounts, Scale(d)),
			hi.Counts, hi.Children, hi.Labels, idx, ConvertDType(valid, dtypes.Int32), kept, sq.Out, ref.Out}
	}, q, keys, vals)
	scores, coarse, counts, children, labels := flat(out[0]), flat(out[1]), flat(out[2]), flatI32(out[3]), flatI32(out[4])
	idx, valid, kept := flatI32(out[5]), flatI32(out[6]), flatI32(out[7])
	for hh := range h {
		sc, cnt := scores[hh*k:(hh+1)*k], counts[hh*k:(hh+1)*k]
		ch := children[hh*k1 : (hh+1)*k1]
		first := make([]int, k1)
		for c := 1; c < k1; c++ {
			first[c] = first[c-1] + int(ch[c-1])
		}
		// The reference coarse selection: best coarse score first, children until the slots are full.
		byScore := []int{0, 1, 2, 3}
		sort.SliceStable(byScore, func(a, b int) bool { return coarse[hh*k1+byScore[a]] > coarse[hh*k1+byScore[b]] })
		pruned, before := 0, 0
		for _, c := range byScore {
			for j := first[c]; j < first[c]+int(ch[c]); j++ {
				switch scored := !math.IsInf(float64(sc[j]), -1); {
				case before+int(ch[c]) <= slots && !scored:
					t.Errorf("head %d: coarse cluster %d is kept but its child %d has no score", hh, c, j)
				case before >= slots && scored:
					t.Errorf("head %d: coarse cluster %d is pruned but its child %d has score %g", hh, c, j, sc[j])
				}
			}
			if before >= slots && ch[c] > 0 {
				pruned++
			}
			before += int(ch[c])
		}
		if pruned == 0 {
			t.Fatalf("head %d: no coarse cluster pruned (children %v)", hh, ch)
		}
		// Every kept key belongs to a scored cluster; all scored keys are kept (budget > scored keys).
		scoredKeys := 0.0
		for j := range k {
			if !math.IsInf(float64(sc[j]), -1) {
				scoredKeys += float64(cnt[j])
			}
		}
		listed := map[int32]bool{}
		for j := range 256 {
			if valid[hh*256+j] == 0 {
				continue
			}
			key := idx[hh*256+j]
			listed[key] = true
			if l := labels[hh*s+int(key)]; math.IsInf(float64(sc[l]), -1) {
				t.Errorf("head %d: key %d of unscored fine cluster %d is kept", hh, key, l)
			}
		}
		if float64(kept[hh]) != scoredKeys || scoredKeys >= budget {
			t.Errorf("head %d: kept %d keys, the scored clusters hold %g (budget %d)", hh, kept[hh], scoredKeys, budget)
		}
		for _, n := range needle {
			if !listed[int32(n)] {
				t.Errorf("head %d: needle key %d not kept", hh, n)
			}
		}
		t.Logf("head %d: coarse scores %v, children %v; %g of %d keys scored and kept", hh, coarse[hh*k1:(hh+1)*k1], ch, scoredKeys, s)
	}
	if diff := maxAbsDiff(flat(out[8]), flat(out[9])); diff > 0.02 {
		t.Errorf("squeezed output differs from dense by %.3g", diff)
	}
}

// TestHierarchicalEmptyAndHugeLogits: a hand-made index with an empty fine cluster and an empty coarse
// cluster, queries of enormous norm: every score, kept list and attention output is finite, the empty
// clusters and the unscored ones have no score, and the kept rows are valid.
func TestHierarchicalEmptyAndHugeLogits(t *testing.T) {
	const h, s, clustered, window, d, k, k1 = 1, 20, 18, 2, 8, 6, 3
	// Fine clusters 0..5 with 4, 6, 3, 2, 3, 0 keys; coarse 0 = {0, 1}, coarse 1 empty, coarse 2 = {2, 3, 4}.
	fineCounts := []float32{4, 6, 3, 2, 3, 0}
	labels := make([]int32, s)
	for i, j := 0, 0; j < k; j++ {
		for range int(fineCounts[j]) {
			labels[i] = int32(j)
			i++
		}
	}
	rng := rand.New(rand.NewPCG(35, 36))
	cent, coarse := flat(randn(rng, 1e3, h, k, d)), flat(randn(rng, 1e3, h, k1, d))
	for j := range d {
		coarse[d+j] = 0 // the empty coarse cluster has a zero centroid
	}
	for _, slots := range []int{1, 2, 3, 6} {
		out := MustExecOnceN(testBackend(), func(q, keys, cent, counts, labels, coarse *Node) []*Node {
			g := q.Graph()
			cl := Const(g, int32(clustered))
			order, starts := ClusterOrder(labels, counts, cl)
			ix := LayerIndex{Centroids: cent, Counts: counts, Starts: starts, Order: order, Clustered: cl,
				Window: Const(g, int32(window)), Budget: Const(g, int32(12)), MaxKept: 64,
				CoarseCentroids: coarse, CoarseCounts: Const(g, [][]float32{{10, 0, 8}}),
				CoarseChildren: Const(g, [][]int32{{2, 0, 3}}), FineSlots: slots}
			_, scores, _, _ := HierarchicalScores(q, ix, Scale(d))
			idx, valid, kept := Select(q, ix, Scale(d))
			p := Attend(q, keys, keys, Partial{}, ix, Scale(d), KernelEinsum)
			ix.Threshold = Const(g, float32(0))
			tIdx, _, _ := Select(q, ix, Scale(d))
			return []*Node{scores, HierarchicalClusterScores(q, ix, Scale(d)), idx, ConvertDType(valid, dtypes.Int32), kept, p.Out, p.LSE, tIdx}
		}, randn(rng, 1e3, h, 3, d), randn(rng, 1e3, h, s, d), tensorOf(cent, h, k, d), tensorOf(fineCounts, h, k),
			tensors.FromFlatDataAndDimensions(labels, h, s), tensorOf(coarse, h, k1, d))
		allFinite(t, "slot scores", flat(out[0]))
		allFinite(t, "attention out", flat(out[5]))
		allFinite(t, "attention lse", flat(out[6]))
		sc := flat(out[1])
		nScored := 0
		for j, x := range sc {
			switch {
			case math.IsInf(float64(x), -1):
			case math.IsNaN(float64(x)) || math.IsInf(float64(x), 1) || x < 0:
				t.Errorf("slots %d: fine cluster %d scored %g", slots, j, x)
			default:
				nScored++
			}
		}
		if math.IsInf(float64(sc[0]), -1) && math.IsInf(float64(sc[2]), -1) || !math.IsInf(float64(sc[5]), -1) || nScored > slots {
			t.Errorf("slots %d: cluster scores %v", slots, sc)
		}
		for _, x := range append(flatI32(out[2]), flatI32(out[7])...) {
			if x < 0 || x >= clustered+window {
				t.Errorf("slots %d: kept row %d outside the context", slots, x)
			}
		}
		t.Logf("slots %d: cluster scores %v, kept %v", slots, sc, flatI32(out[4]))
	}
}

// TestKMeansHierarchical: the coarse k-means' centroids are the count-weighted means of their children
// (the fine clusters it labels with them; empty fine clusters in none), their counts the children's keys;
// after renumbering, each coarse cluster's children are contiguous, the empty fine clusters come last,
// the counts are the keys' labels' histogram and every fine centroid is the mean of its keys.
func TestKMeansHierarchical(t *testing.T) {
	const h, s, clustered, d, k, k1 = 2, 150, 140, 8, 40, 5
	rng := rand.New(rand.NewPCG(37, 38))
	kv := flat(randn(rng, 1, h, s, d))
	for i := 0; i < h*s; i += 3 { // duplicates: some fine clusters end up empty
		copy(kv[i*d:(i+1)*d], kv[(i%7)*d:(i%7+1)*d])
	}
	keys := tensorOf(kv, h, s, d)
	// KMeansCoarse alone, on random fine centroids with some empty clusters.
	fc, fn := flat(randn(rng, 2, h, k, d)), make([]float32, h*k)
	for i := range fn {
		fn[i] = float32(rng.IntN(10)) // 0: empty
	}
	out := MustExecOnceN(testBackend(), func(keys, fc, fn *Node) []*Node {
		c, l, n := KMeansCoarse(fc, fn, k1, 5)
		hi := KMeansHierarchical(keys, Const(keys.Graph(), int32(clustered)), k, k1, 5)
		return []*Node{c, l, n, hi.Centroids, hi.Counts, hi.Labels, hi.CoarseCentroids, hi.CoarseCounts, hi.Children}
	}, keys, tensorOf(fc, h, k, d), tensorOf(fn, h, k))
	close := func(what string, got, want []float64) {
		t.Helper()
		for j := range got {
			if math.Abs(got[j]-want[j]) > 1e-4*(1+math.Abs(want[j])) {
				t.Errorf("%s: %v, want %v", what, got, want)
				return
			}
		}
	}
	// weighted is the count-weighted mean of the vectors vs[j] with weights ns[j] for j in members.
	weighted := func(vs, ns []float32, members []int) (mean []float64, total float64) {
		mean = make([]float64, d)
		for _, j := range members {
			total += float64(ns[j])
			for x := range d {
				mean[x] += float64(ns[j]) * float64(vs[j*d+x])
			}
		}
		for x := range mean {
			mean[x] /= max(total, 1)
		}
		return mean, total
	}
	f64 := func(v []float32) []float64 {
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	cc, cl, cn := flat(out[0]), flatI32(out[1]), flat(out[2])
	for hh := range h {
		nonEmptyCoarse := 0
		for c := range k1 {
			var members []int
			for j := range k {
				if fn[hh*k+j] == 0 && cl[hh*k+j] != -1 {
					t.Errorf("head %d: empty fine cluster %d has coarse label %d", hh, j, cl[hh*k+j])
				}
				if cl[hh*k+j] == int32(c) {
					members = append(members, j)
				}
			}
			mean, total := weighted(fc[hh*k*d:], fn[hh*k:], members)
			close(fmt.Sprintf("head %d coarse centroid %d", hh, c), f64(cc[(hh*k1+c)*d:(hh*k1+c+1)*d]), mean)
			if float64(cn[hh*k1+c]) != total {
				t.Errorf("head %d coarse cluster %d: count %g, children's keys %g", hh, c, cn[hh*k1+c], total)
			}
			if total > 0 {
				nonEmptyCoarse++
			}
		}
		if nonEmptyCoarse < 2 {
			t.Errorf("head %d: %d non-empty coarse clusters", hh, nonEmptyCoarse)
		}
	}

	// The whole hierarchy on keys.
	fcent, fcount, flab := flat(out[3]), flat(out[4]), flatI32(out[5])
	ccent, ccount, ch := flat(out[6]), flat(out[7]), flatI32(out[8])
	empties := 0
	for hh := range h {
		hist := make([]float32, k)
		members := make([][]int, k)
		for i := range clustered {
			l := flab[hh*s+i]
			hist[l]++
			members[l] = append(members[l], i)
		}
		if !slices.Equal(hist, fcount[hh*k:(hh+1)*k]) {
			t.Errorf("head %d: counts %v, labels' histogram %v", hh, fcount[hh*k:(hh+1)*k], hist)
		}
		ones := make([]float32, s)
		for j := range k {
			for i := range ones {
				ones[i] = 1
			}
			if len(members[j]) > 0 {
				mean, _ := weighted(kv[hh*s*d:], ones, members[j])
				close(fmt.Sprintf("head %d fine centroid %d", hh, j), f64(fcent[(hh*k+j)*d:(hh*k+j+1)*d]), mean)
			}
		}
		first := 0
		for c := range k1 {
			var kids []int
			for j := first; j < first+int(ch[hh*k1+c]); j++ {
				kids = append(kids, j)
				if fcount[hh*k+j] == 0 {
					t.Errorf("head %d: coarse cluster %d has the empty child %d", hh, c, j)
				}
			}
			first += int(ch[hh*k1+c])
			mean, total := weighted(fcent[hh*k*d:], fcount[hh*k:], kids)
			close(fmt.Sprintf("head %d: coarse centroid %d vs its contiguous children", hh, c), f64(ccent[(hh*k1+c)*d:(hh*k1+c+1)*d]), mean)
			if float64(ccount[hh*k1+c]) != total {
				t.Errorf("head %d coarse cluster %d: count %g, children's keys %g", hh, c, ccount[hh*k1+c], total)
			}
		}
		for j := first; j < k; j++ {
			if fcount[hh*k+j] != 0 {
				t.Errorf("head %d: fine cluster %d (past the children) has %g keys", hh, j, fcount[hh*k+j])
			}
			empties++
		}
	}
	if empties == 0 {
		t.Error("the test needs empty fine clusters")
	}
}

// TestHierarchicalNormaliser: with one child per coarse cluster (its centroid and count those of the
// child), the coarse terms of the fine normaliser are exact, so the scored fine clusters' scores equal
// the flat index's although most of them are pruned.
func TestHierarchicalNormaliser(t *testing.T) {
	const h, d, k, m = 2, 8, 6, 5
	rng := rand.New(rand.NewPCG(39, 40))
	cent := flat(randn(rng, 1, h, k, d))
	counts := []float32{3, 7, 2, 9, 4, 0, 5, 1, 8, 2, 6, 0} // the last fine cluster of each head is empty
	out := MustExecOnceN(testBackend(), func(q, cent, counts *Node) []*Node {
		g := q.Graph()
		fine := Slice(cent, AxisRange(), AxisRange(0, k-1))
		n := ConvertDType(counts, dtypes.Int32)
		ix := LayerIndex{Centroids: cent, Counts: counts, Starts: Sub(CumSum(n, 1), n), // as ClusterOrder's
			CoarseCentroids: fine, CoarseCounts: Slice(counts, AxisRange(), AxisRange(0, k-1)),
			CoarseChildren: Ones(g, shapes.Make(dtypes.Int32, h, k-1)), FineSlots: 2}
		return []*Node{HierarchicalClusterScores(q, ix, Scale(d)), ClusterScores(q, cent, counts, Scale(d))}
	}, randn(rng, 2, h, m, d), tensorOf(cent, h, k, d), tensorOf(counts, h, k))
	hs, fs := flat(out[0]), flat(out[1])
	scored := 0
	for j := range hs {
		if math.IsInf(float64(hs[j]), -1) {
			continue
		}
		scored++
		if math.Abs(float64(hs[j]-fs[j])) > 1e-6*float64(fs[j]) {
			t.Errorf("fine cluster %d: hierarchical score %g, flat %g", j, hs[j], fs[j])
		}
	}
	if scored != 2*h {
		t.Errorf("%d fine clusters scored, want %d: %v", scored, 2*h, hs)
	}
}

// TestCoarseSelectionMatchesSearch: the all-pairs boundary and run expansion of the coarse level give
// budgetBits' boundary and expandRuns' slots, ties and empty clusters included.
func TestCoarseSelectionMatchesSearch(t *testing.T) {
	const h, k, b = 3, 40, 64
	rng := rand.New(rand.NewPCG(41, 42))
	scores, counts := make([]float32, h*k), make([]int32, h*k)
	for i := range scores {
		scores[i] = float32(rng.IntN(12)) * 0.01 // many ties, some zero scores
		counts[i] = int32(rng.IntN(5))           // some empty clusters
	}
	for _, budget := range []int{1, 7, 30, 64, 75, 200} {
		out := MustExecOnceN(testBackend(), func(scores, counts *Node) []*Node {
			g := scores.Graph()
			bits, bud := ScoreBits(scores), Const(g, int32(budget))
			lo := budgetBits(bits, counts, bud, 2)
			dense := boundaryBits(bits, counts, bud)
			loB := BroadcastToDims(lo, h, k)
			strict := Where(GreaterThan(bits, loB), counts, ZerosLike(counts))
			ties := Where(Equal(bits, loB), counts, ZerosLike(counts))
			c, off, total, begin := expandRuns(strict, ties, Const(g, int32(b)), b)
			dc, doff, dtotal, dbegin := expandRunsDense(strict, ties, Const(g, int32(b)), b)
			return []*Node{lo, dense, ReduceSum(counts, 1), c, dc, off, doff, total, dtotal, begin, dbegin}
		}, tensorOf(scores, h, k), tensors.FromFlatDataAndDimensions(counts, h, k))
		lo, dense, total := flatI32(out[0]), flatI32(out[1]), flatI32(out[2])
		for hh := range h {
			if int(total[hh]) >= budget && lo[hh] != dense[hh] || int(total[hh]) < budget && dense[hh] != -1 {
				t.Errorf("budget %d head %d: boundary %d, budgetBits %d (%d keys)", budget, hh, dense[hh], lo[hh], total[hh])
			}
		}
		for i := 3; i < len(out); i += 2 {
			if got, want := flatI32(out[i+1]), flatI32(out[i]); !slices.Equal(got, want) {
				t.Errorf("budget %d: expandRunsDense output %d differs:\n got %v\nwant %v", budget, (i-3)/2, got, want)
			}
		}
	}
}
