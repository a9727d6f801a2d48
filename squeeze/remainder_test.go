package squeeze

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/gomlx/compute/dtypes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// tightKeys returns keys [h, s, d] made of k distinct random directions, each repeated over a run of s/k
// consecutive rows (run j: rows [j·s/k, (j+1)·s/k)), so that KMeansMasked's evenly spread seeds start one
// cluster per run and every cluster's keys equal its centroid.
func tightKeys(rng *rand.Rand, h, s, d, k int, norm float32) *tensors.Tensor {
	dirs := flat(randn(rng, norm, h, k, d))
	v := make([]float32, h*s*d)
	for hh := range h {
		for i := range s {
			j := i / (s / k)
			copy(v[(hh*s+i)*d:(hh*s+i+1)*d], dirs[(hh*k+j)*d:(hh*k+j+1)*d])
		}
	}
	return tensorOf(v, h, s, d)
}

// TestRemainderAttention: where every cluster's keys equal its centroid, the kept keys' attention merged
// with RemainderAttention over the dropped ones equals dense attention exactly, whatever the selection
// keeps of whole clusters (budget, threshold and mass modes, at most 3 of the 8 clusters), while the kept
// keys alone do not; the dropped counts are each cluster's keys left out of the list. (A cluster that a
// budget splits stands for its dropped keys with the mean value of all its keys: not exact, and not tested
// here.)
func TestRemainderAttention(t *testing.T) {
	const h, m, s, d, k, window = 2, 3, 96, 16, 8, 0
	rng := rand.New(rand.NewPCG(41, 42))
	q, keys, vals := randn(rng, 1, h, m, d), tightKeys(rng, h, s, d, k, 0.5), randn(rng, 1, h, s, d)
	scale := Scale(d)
	for _, mode := range []string{"budget", "threshold", "mass"} {
		out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
			g := q.Graph()
			cl, win := Const(g, int32(s)), Const(g, int32(window))
			cent, labels, counts := KMeansMasked(keys, cl, k, 3)
			order, starts := ClusterOrder(labels, counts, cl)
			ix := LayerIndex{Centroids: cent, Counts: counts, Starts: starts, Order: order, Clustered: cl, Window: win,
				Budget: Const(g, int32(3*s/k)), MaxKept: s} // at most 3 whole clusters
			switch mode {
			case "threshold":
				ix.Threshold = Const(g, float32(1.0/float32(s))) // clusters above a uniform key's probability
			case "mass":
				ix.Threshold, ix.Mass = Const(g, float32(0.5)), true
			}
			idx, valid, kept, dropped := SelectDropped(q, ix, scale)
			sparse := AttendKept(q, keys, vals, idx, valid, kept, scale, KernelEinsum)
			rem := RemainderAttention(q, cent, ClusterMeans(vals, labels, counts, cl), dropped, scale)
			ref := DenseAttention(q, keys, vals, nil, scale)
			ix.Means = ClusterMeans(vals, labels, counts, cl) // Attend's remainder, from the lookup's own scores
			att := Attend(q, keys, vals, Partial{}, ix, scale, KernelEinsum)
			return []*Node{Merge(sparse, rem).Out, ref.Out, sparse.Out, ConvertDType(kept, dtypes.Float32), dropped, counts,
				att.Out, att.LSE, ref.LSE}
		}, q, keys, vals)
		if diff := maxAbsDiff(flat(out[0]), flat(out[1])); diff > 1e-5 {
			t.Errorf("%s: kept ⊕ remainder differs from dense by %.2e", mode, diff)
		}
		if diff := maxAbsDiff(flat(out[6]), flat(out[1])); diff > 1e-5 {
			t.Errorf("%s: Attend with means differs from dense by %.2e", mode, diff)
		}
		if diff := maxAbsDiff(flat(out[7]), flat(out[8])); diff > 1e-5 {
			t.Errorf("%s: Attend with means: log-sum-exp differs from dense by %.2e", mode, diff)
		}
		if diff := maxAbsDiff(flat(out[2]), flat(out[1])); diff < 1e-2 {
			t.Errorf("%s: the kept keys alone are within %.2e of dense: the case drops nothing that matters", mode, diff)
		}
		kept, dropped, counts := flat(out[3]), flat(out[4]), flat(out[5])
		for hh := range h {
			var nd, nc float32
			for c := range k {
				if dropped[hh*k+c] < 0 || dropped[hh*k+c] > counts[hh*k+c] {
					t.Errorf("%s: head %d cluster %d: %v dropped of %v", mode, hh, c, dropped[hh*k+c], counts[hh*k+c])
				}
				nd, nc = nd+dropped[hh*k+c], nc+counts[hh*k+c]
			}
			if nc != s || kept[hh]+nd != nc || kept[hh] == 0 || nd == 0 {
				t.Errorf("%s: head %d keeps %v and drops %v of %v keys (want a partial selection summing to %d)", mode, hh, kept[hh], nd, nc, s)
			}
		}
	}
}

// TestRemainderAllKept: with every key kept, RemainderAttention weighs nothing (log-sum-exp -1e30) and
// Attend with means equals dense attention.
func TestRemainderAllKept(t *testing.T) {
	const h, m, s, d, k, window = 2, 4, 80, 16, 6, 8
	rng := rand.New(rand.NewPCG(43, 44))
	q, keys, vals := randn(rng, 1, h, m, d), randn(rng, 1, h, s, d), randn(rng, 1, h, s, d)
	scale := Scale(d)
	out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
		g := q.Graph()
		cl, win := Const(g, int32(s-window)), Const(g, int32(window))
		cent, labels, counts := KMeansMasked(keys, cl, k, 3)
		order, starts := ClusterOrder(labels, counts, cl)
		ix := LayerIndex{Centroids: cent, Counts: counts, Starts: starts, Order: order, Clustered: cl, Window: win,
			Budget: cl, MaxKept: s, Means: ClusterMeans(vals, labels, counts, cl)}
		_, _, _, dropped := SelectDropped(q, ix, scale)
		rem := RemainderAttention(q, cent, ix.Means, dropped, scale)
		sq := Attend(q, keys, vals, Partial{}, ix, scale, KernelEinsum)
		return []*Node{sq.Out, DenseAttention(q, keys, vals, nil, scale).Out, rem.LSE}
	}, q, keys, vals)
	if diff := maxAbsDiff(flat(out[0]), flat(out[1])); diff > 1e-5 {
		t.Errorf("every key kept, with means: differs from dense by %.2e", diff)
	}
	for i, v := range flat(out[2]) {
		if v > -1e29 {
			t.Fatalf("row %d: the remainder of a selection that keeps every key has log-sum-exp %v", i, v)
		}
	}
}

// TestClusterMeans: the mean value of each cluster's clustered rows (rows past `clustered` ignored), zero
// for an empty cluster, against a host computation.
func TestClusterMeans(t *testing.T) {
	const h, s, d, k, clustered = 2, 40, 4, 5, 33
	rng := rand.New(rand.NewPCG(45, 46))
	vals := randn(rng, 1, h, s, d)
	lab := make([]int32, h*s)
	cnt := make([]float32, h*k)
	for i := range lab {
		lab[i] = int32(rng.IntN(k - 1)) // cluster k-1 stays empty
		if i%s < clustered {
			cnt[i/s*k+int(lab[i])]++
		}
	}
	labels, counts := tensors.FromFlatDataAndDimensions(lab, h, s), tensorOf(cnt, h, k)
	got := flat(MustExecOnce(testBackend(), func(v, l, c *Node) *Node {
		return ClusterMeans(v, l, c, Const(v.Graph(), int32(clustered)))
	}, vals, labels, counts))
	v := flat(vals)
	want := make([]float32, h*k*d)
	for hh := range h {
		for i := range clustered {
			c := int(lab[hh*s+i])
			for j := range d {
				want[(hh*k+c)*d+j] += v[(hh*s+i)*d+j] / cnt[hh*k+c]
			}
		}
	}
	if diff := maxAbsDiff(got, want); diff > 1e-5 {
		t.Errorf("ClusterMeans differs from the host's means by %.2e", diff)
	}
}

// TestHierarchicalRemainder: the remainder over a hierarchical index (LayerIndex.MeanSums).
//   - Keys of 4 exact directions, one run each (4 non-empty fine clusters of 8, one per coarse cluster): with 2
//     fine slots, two coarse clusters go unscored; kept ⊕ remainder equals dense attention exactly when the
//     budget keeps one whole cluster (the scored one dropped stands as its centroid, the unscored ones as their
//     coarse centroids, each with its exact mean value), and the kept keys alone do not.
//   - With every fine cluster scored, it is the flat index's remainder.
//   - Random keys with 8 of 24 fine clusters scored: closer to dense than without the remainder.
//   - HierarchicalMeanSums against a host computation.
func TestHierarchicalRemainder(t *testing.T) {
	const h, m, s, d = 2, 3, 96, 16
	rng := rand.New(rand.NewPCG(51, 52))
	scale := Scale(d)
	q, tight, vals := randn(rng, 1, h, m, d), tightKeys(rng, h, s, d, 4, 0.5), randn(rng, 1, h, s, d)
	out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
		g := q.Graph()
		hi, hier, _ := hierIndex(keys, s, 0, 8, 4, 3, 2)
		hier.Budget, hier.MaxKept = Const(g, int32(s/4)), s
		alone := Attend(q, keys, vals, Partial{}, hier, scale, KernelEinsum)
		hier.Means = ClusterMeans(vals, hi.Labels, hi.Counts, hier.Clustered)
		hier.MeanSums = HierarchicalMeanSums(hier.Means, hi.Counts)
		with := Attend(q, keys, vals, Partial{}, hier, scale, KernelEinsum)
		ref := DenseAttention(q, keys, vals, nil, scale)
		return []*Node{with.Out, with.LSE, ref.Out, ref.LSE, alone.Out, ConvertDType(hi.Counts, dtypes.Float32)}
	}, q, tight, vals)
	if n := flat(out[5]); slices.ContainsFunc(n, func(c float32) bool { return c != 0 && c != s/4 }) {
		t.Fatalf("fine clusters %v: the case needs one cluster per direction", n)
	}
	if diff := maxAbsDiff(flat(out[0]), flat(out[2])); diff > 1e-5 {
		t.Errorf("tight keys: kept ⊕ remainder differs from dense by %.2e", diff)
	}
	if diff := maxAbsDiff(flat(out[1]), flat(out[3])); diff > 1e-4 {
		t.Errorf("tight keys: log-sum-exp differs from dense by %.2e", diff)
	}
	if diff := maxAbsDiff(flat(out[4]), flat(out[2])); diff < 1e-2 {
		t.Errorf("tight keys: the kept keys alone are within %.2e of dense: nothing that matters is dropped", diff)
	}

	const k, k1, clustered, window = 24, 6, 84, 12
	keys := randn(rng, 1, h, s, d)
	out = MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
		g := q.Graph()
		hi, hier, fl := hierIndex(keys, clustered, window, k, k1, 4, k)
		means := ClusterMeans(vals, hi.Labels, hi.Counts, hier.Clustered)
		sums := HierarchicalMeanSums(means, hi.Counts)
		ref := DenseAttention(q, keys, vals, nil, scale)
		res := []*Node{ref.Out, means, sums, ConvertDType(hi.Counts, dtypes.Float32)}
		for _, slots := range []int{k, 8} {
			ix := hier
			ix.FineSlots, ix.Budget, ix.MaxKept = slots, Const(g, int32(20)), 64
			without := Attend(q, keys, vals, Partial{}, ix, scale, KernelEinsum)
			ix.Means, ix.MeanSums = means, sums
			with := Attend(q, keys, vals, Partial{}, ix, scale, KernelEinsum)
			fx := fl
			fx.Budget, fx.MaxKept, fx.Means = ix.Budget, 64, means
			flatWith := Attend(q, keys, vals, Partial{}, fx, scale, KernelEinsum)
			res = append(res, with.Out, with.LSE, without.Out, flatWith.Out, flatWith.LSE)
		}
		return res
	}, q, keys, vals)
	ref, means, sums, counts := flat(out[0]), flat(out[1]), flat(out[2]), flat(out[3])
	for hh := range h {
		for j := 0; j <= k; j++ {
			for c := range d {
				var want float64
				for i := range j {
					want += float64(counts[hh*k+i]) * float64(means[(hh*k+i)*d+c])
				}
				if got := sums[(hh*(k+1)+j)*d+c]; math.Abs(float64(got)-want) > 1e-4*(1+math.Abs(want)) {
					t.Fatalf("mean sums head %d row %d: %v, want %v", hh, j, got, want)
				}
			}
		}
	}
	all := out[4:9]
	if diff := maxAbsDiff(flat(all[0]), flat(all[3])); diff > 1e-5 {
		t.Errorf("every fine cluster scored: differs from the flat index's remainder by %.2e", diff)
	}
	if diff := maxAbsDiff(flat(all[1]), flat(all[4])); diff > 1e-5 {
		t.Errorf("every fine cluster scored: log-sum-exp differs from the flat index's by %.2e", diff)
	}
	few := out[9:14]
	with, without := maxAbsDiff(flat(few[0]), ref), maxAbsDiff(flat(few[2]), ref)
	t.Logf("8 of %d fine clusters scored, 20 keys: max |out - dense| %.3f with the remainder, %.3f without", k, with, without)
	if with >= without {
		t.Errorf("8 fine slots: the remainder does not bring the output closer to dense (%.3f against %.3f)", with, without)
	}
}
