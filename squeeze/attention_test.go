package squeeze

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// TestAttendAllKeptEqualsDense: with every key kept, Attend (lookup, cluster-level selection, sparse
// attention with each kernel, merge) equals dense attention over the fixed context's valid rows and the
// causal dynamic segment — keys in position order and stored sorted by cluster, in budget and threshold
// modes. The context capacity has padding rows past the window, which must not be attended.
func TestAttendAllKeptEqualsDense(t *testing.T) {
	const h, m, capacity, clustered, window, dyn, d, k = 2, 6, 96, 70, 10, 8, 16, 7
	rng := rand.New(rand.NewPCG(23, 24))
	q, keys, vals := randn(rng, 1, h, m, d), randn(rng, 1, h, capacity, d), randn(rng, 1, h, capacity, d)
	dk, dv := randn(rng, 1, h, dyn, d), randn(rng, 1, h, dyn, d)
	scale := Scale(d)
	for _, sorted := range []bool{false, true} {
		for _, threshold := range []bool{false, true} {
			for _, kernel := range []Kernel{KernelAuto, KernelEinsum, KernelReduce, KernelFused} {
				name := fmt.Sprintf("sorted=%v/threshold=%v/kernel=%d", sorted, threshold, kernel)
				out := MustExecOnceN(testBackend(), func(q, keys, vals, dk, dv *Node) []*Node {
					g := q.Graph()
					cl, win := Const(g, int32(clustered)), Const(g, int32(window))
					cent, labels, counts := KMeansMasked(keys, cl, k, 4)
					order, starts := ClusterOrder(labels, counts, cl)
					ix := LayerIndex{Centroids: ConvertDType(cent, dtypes.BFloat16), Counts: counts, Starts: starts,
						Order: order, Clustered: cl, Window: win, Budget: Const(g, int32(clustered)), MaxKept: 128}
					ck, cv := keys, vals
					if sorted {
						ck, cv, ix.Order = PermuteRows(keys, order), PermuteRows(vals, order), nil
					}
					if threshold {
						ix.Threshold = Const(g, float32(-1))
					}
					// Queries are 2 tokens × 3 heads; token i%2 sees dyn rows ≤ 5 + i%2.
					row := Iota(g, shapes.Make(dtypes.Int32, 1, m, dyn), 1)
					col := Iota(g, shapes.Make(dtypes.Int32, 1, m, dyn), 2)
					dynMask := LessOrEqual(col, AddScalar(ModScalar(row, 2), 5))
					sq := Attend(q, ck, cv, DenseAttention(q, dk, dv, dynMask, scale), ix, scale, kernel)
					ctxMask := LessThan(Iota(g, shapes.Make(dtypes.Int32, 1, m, capacity), 2),
						Const(g, int32(clustered+window)))
					ref := DenseAttention(q, Concatenate([]*Node{keys, dk}, 1), Concatenate([]*Node{vals, dv}, 1),
						Concatenate([]*Node{ctxMask, dynMask}, -1), scale)
					return []*Node{sq.Out, ref.Out, sq.LSE, ref.LSE}
				}, q, keys, vals, dk, dv)
				if diff := maxAbsDiff(flat(out[0]), flat(out[1])); diff > 1e-5 {
					t.Errorf("%s: output differs from dense by %.2e", name, diff)
				}
				if diff := maxAbsDiff(flat(out[2]), flat(out[3])); diff > 1e-5 {
					t.Errorf("%s: log-sum-exp differs from dense by %.2e", name, diff)
				}
			}
		}
	}
}

// TestAttendPlantedNeedle: the budget mode of Attend at 10% keeps the one key dense attention depends on.
func TestAttendPlantedNeedle(t *testing.T) {
	const h, s, d, k = 2, 256, 16, 13
	rng := rand.New(rand.NewPCG(3, 4))
	kv := flat(randn(rng, 0.3, h, s, d))
	vals := randn(rng, 1, h, s, d)
	needle := []int{100, 201}
	qv := make([]float32, h*d)
	for hh := range h {
		kv[(hh*s+needle[hh])*d+hh] = 8
		for j := range d {
			if j != hh {
				kv[(hh*s+needle[hh])*d+j] = 0
			}
		}
		qv[hh*d+hh] = 8
	}
	keys := tensorOf(kv, h, s, d)
	q := tensorOf(qv, h, 1, d)
	for _, kernel := range []Kernel{KernelEinsum, KernelReduce} {
		out := MustExecOnceN(testBackend(), func(q, keys, values *Node) []*Node {
			g := q.Graph()
			cl := Const(g, int32(s))
			cent, labels, counts := KMeansMasked(keys, cl, k, 8)
			order, starts := ClusterOrder(labels, counts, cl)
			ix := LayerIndex{Centroids: cent, Counts: counts, Starts: starts, Order: order, Clustered: cl,
				Window: Const(g, int32(0)), Budget: Const(g, int32(s/10)), MaxKept: 64}
			idx, valid, kept := Select(q, ix, Scale(d))
			sq := AttendKept(q, keys, values, idx, valid, kept, Scale(d), kernel)
			ref := DenseAttention(q, keys, values, nil, Scale(d))
			return []*Node{sq.Out, ref.Out}
		}, q, keys, vals)
		if diff := maxAbsDiff(flat(out[0]), flat(out[1])); diff > 1e-3 {
			t.Errorf("kernel %d: squeezed output differs from dense by %.2e", kernel, diff)
		}
	}
}

func tensorOf(v []float32, dims ...int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(v, dims...)
}

// TestKMeansHalfPrecision: the half-precision k-means path (bfloat16 keys; taken on accelerators, forced
// here on the pure-Go backend) separates blobs as the float32 path does, with exact counts and
// centroids equal to the float32 means of the same keys.
func TestKMeansHalfPrecision(t *testing.T) {
	const h, s, d, k, clustered = 2, 120, 8, 3, 111
	rng := rand.New(rand.NewPCG(25, 26))
	kv := make([]float32, h*s*d)
	for i := range h * s {
		blob := (i * 7) % 3
		for j := range d {
			kv[i*d+j] = float32(rng.NormFloat64()) * 0.05
		}
		kv[i*d+blob] += 3
	}
	keys := tensorOf(kv, h, s, d)
	run := func(half bool) []*tensors.Tensor {
		testHalfKMeans = half
		defer func() { testHalfKMeans = false }()
		return MustExecOnceN(testBackend(), func(keys *Node) []*Node {
			if half {
				keys = ConvertDType(keys, dtypes.BFloat16)
			}
			c, l, n := KMeansMasked(keys, Const(keys.Graph(), int32(clustered)), k, 5)
			return []*Node{c, l, n}
		}, keys)
	}
	ref, got := run(false), run(true)
	lr, lg := tensors.MustCopyFlatData[int32](ref[1]), tensors.MustCopyFlatData[int32](got[1])
	for hh := range h {
		for i := range clustered {
			if lr[hh*s+i] != lg[hh*s+i] {
				t.Fatalf("head %d key %d: label %d (bfloat16) vs %d (float32)", hh, i, lg[hh*s+i], lr[hh*s+i])
			}
		}
	}
	if diff := maxAbsDiff(flat(ref[2]), flat(got[2])); diff != 0 {
		t.Errorf("counts differ by %g", diff)
	}
	// The bfloat16 path averages the keys rounded to bfloat16: within bfloat16 rounding of the float32 means.
	if diff := maxAbsDiff(flat(ref[0]), flat(got[0])); diff > 0.02 {
		t.Errorf("centroids differ by %.3g", diff)
	}
}

// TestSplitKValues: attention of a few query rows over a long segment computes its values product in
// split form (SplitKValues) where splitChunk says so, and equals the one-product form: float32 and
// bfloat16, masked keys, chunks of 256 and 64.
func TestSplitKValues(t *testing.T) {
	TestSplitK = true
	defer func() { TestSplitK = false }()
	g := NewGraph(testBackend(), "chunks")
	for _, c := range []struct{ m, s, want int }{{3, 1024, 256}, {3, 1088, 64}, {16, 2048, 256}, {17, 2048, 0}, {3, 960, 0}, {3, 1050, 0}} {
		if got := splitChunk(g, c.m, c.s); got != c.want {
			t.Errorf("splitChunk(%d rows, %d keys) = %d, want %d", c.m, c.s, got, c.want)
		}
	}
	const h, m, d = 2, 3, 16
	rng := rand.New(rand.NewPCG(41, 42))
	for _, s := range []int{1024, 1088} {
		for _, dt := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
			q, keys, vals := randn(rng, 1, h, m, d), randn(rng, 1, h, s, d), randn(rng, 1, h, s, d)
			attend := func() []*tensors.Tensor {
				return MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
					g := q.Graph()
					mask := LessThan(Iota(g, shapes.Make(dtypes.Int32, h, m, s), 2), Const(g, int32(s-37)))
					p := DenseAttention(q, ConvertDType(keys, dt), ConvertDType(vals, dt), mask, Scale(d))
					return []*Node{p.Out, p.LSE}
				}, q, keys, vals)
			}
			split := attend()
			TestSplitK = false
			one := attend()
			TestSplitK = true
			tol := 1e-5
			if dt != dtypes.Float32 {
				tol = 1e-2 // the one product rounds its result to bfloat16 on this backend
			}
			if diff := maxAbsDiff(flat(split[0]), flat(one[0])); diff > tol {
				t.Errorf("%d keys, %s: split output differs by %.2e", s, dt, diff)
			}
			if diff := maxAbsDiff(flat(split[1]), flat(one[1])); diff > 1e-5 {
				t.Errorf("%d keys, %s: split log-sum-exp differs by %.2e", s, dt, diff)
			}
		}
	}
}
