package squeeze

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/gobackend"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// testBackend is the pure-Go backend with ops run one at a time, as the engine configures it.
var testBackend = sync.OnceValue(func() compute.Backend {
	b, err := gobackend.New("ops_sequential")
	if err != nil {
		panic(err)
	}
	return b
})

func randn(rng *rand.Rand, scale float32, dims ...int) *tensors.Tensor {
	n := 1
	for _, d := range dims {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64()) * scale
	}
	return tensors.FromFlatDataAndDimensions(v, dims...)
}

func flat(t *tensors.Tensor) []float32 { return tensors.MustCopyFlatData[float32](t) }

func maxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func allFinite(t *testing.T, name string, v []float32) {
	t.Helper()
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatalf("%s[%d] = %v", name, i, x)
		}
	}
}

// TestAllKeptEqualsDense: with every fixed-context key kept, sparse attention over the context merged with
// causal dense attention over the dynamic keys equals dense attention over everything.
func TestAllKeptEqualsDense(t *testing.T) {
	const h, m, s, dyn, d = 2, 6, 64, 8, 16
	rng := rand.New(rand.NewPCG(1, 2))
	q, k, v := randn(rng, 1, h, m, d), randn(rng, 1, h, s, d), randn(rng, 1, h, s, d)
	dk, dv := randn(rng, 1, h, dyn, d), randn(rng, 1, h, dyn, d)
	scale := Scale(d)
	out := MustExecOnceN(testBackend(), func(q, k, v, dk, dv *Node) []*Node {
		g := q.Graph()
		// Queries see the dynamic keys causally: query i (of the m = 2 tokens × 3 heads) sees dyn keys ≤ 5 + i%2.
		row := Iota(g, shapesOf(dtypes.Int32, 1, m, dyn), 1)
		col := Iota(g, shapesOf(dtypes.Int32, 1, m, dyn), 2)
		dynMask := LessOrEqual(col, AddScalar(ModScalar(row, 2), 5))
		allMask := OnesLike(ConvertDType(Slice(k, AxisRange(), AxisRange(), AxisElem(0)), dtypes.Bool)) // [H, S, 1]
		allMask = Reshape(allMask, h, s)
		idx, valid, _ := Compact(allMask, s)
		sq := Merge(SparseAttention(q, k, v, idx, valid, scale), DenseAttention(q, dk, dv, dynMask, scale))
		fullMask := Concatenate([]*Node{BroadcastToDims(Ones(g, shapesOf(dtypes.Bool, 1, m, s)), 1, m, s), dynMask}, -1)
		ref := DenseAttention(q, Concatenate([]*Node{k, dk}, 1), Concatenate([]*Node{v, dv}, 1), fullMask, scale)
		return []*Node{sq.Out, ref.Out, sq.LSE, ref.LSE}
	}, q, k, v, dk, dv)
	if d := maxAbsDiff(flat(out[0]), flat(out[1])); d > 1e-5 {
		t.Errorf("squeezed (all kept) vs dense: max |Δ| = %.2e", d)
	}
	if d := maxAbsDiff(flat(out[2]), flat(out[3])); d > 1e-5 {
		t.Errorf("log-sum-exp differs by %.2e", d)
	}
}

// TestPlantedNeedle: dense attention depends on one key; clustering puts it in a cluster whose centroid
// the query finds, and the squeezed path at 90% sparsity keeps it and gives dense attention's output.
func TestPlantedNeedle(t *testing.T) {
	const h, s, d, k = 2, 256, 16, 13
	rng := rand.New(rand.NewPCG(3, 4))
	keysT := randn(rng, 0.3, h, s, d)
	vals := randn(rng, 1, h, s, d)
	needle := []int{100, 201} // per head
	kv := flat(keysT)
	qv := make([]float32, h*1*d)
	for hh := range h {
		for j := range d {
			dir := float32(0)
			if j == hh { // the needle points along axis hh
				dir = 1
			}
			kv[(hh*s+needle[hh])*d+j] = 8 * dir
			qv[hh*d+j] = 8 * dir
		}
	}
	keysT = tensors.FromFlatDataAndDimensions(kv, h, s, d)
	q := tensors.FromFlatDataAndDimensions(qv, h, 1, d)
	scale := Scale(d)
	out := MustExecOnceN(testBackend(), func(q, keys, values *Node) []*Node {
		cent, labels, counts := KMeans(keys, k, 8)
		scores := ClusterScores(q, cent, counts, scale)
		mask := BudgetMask(KeyScores(scores, labels), s/10)
		idx, valid, kept := Compact(mask, s/10)
		sq := SparseAttention(q, keys, values, idx, valid, scale)
		ref := DenseAttention(q, keys, values, nil, scale)
		return []*Node{sq.Out, ref.Out, ConvertDType(mask, dtypes.Float32), ConvertDType(kept, dtypes.Float32)}
	}, q, keysT, vals)
	m := flat(out[2])
	for hh := range h {
		if m[hh*s+needle[hh]] != 1 {
			t.Errorf("head %d: the needle key %d was dropped", hh, needle[hh])
		}
	}
	if kept := flat(out[3]); kept[0] != s/10 || kept[1] != s/10 {
		t.Errorf("kept %v keys, want %d per head", kept, s/10)
	}
	if diff := maxAbsDiff(flat(out[0]), flat(out[1])); diff > 1e-3 {
		t.Errorf("squeezed output differs from dense by %.2e", diff)
	}
}

// TestCalibrationHitsSparsity: the calibrated threshold drops the target fraction of the keys (within 2
// points) for the calibration queries themselves.
func TestCalibrationHitsSparsity(t *testing.T) {
	const h, s, d, k, w = 2, 512, 16, 26, 32
	rng := rand.New(rand.NewPCG(5, 6))
	keys := randn(rng, 1, h, s, d)
	out := MustExecOnceN(testBackend(), func(keys *Node) []*Node {
		cent, labels, counts := KMeans(keys, k, 6)
		// The last w keys' positions stand in for the observation-window queries.
		q := Slice(keys, AxisRange(), AxisRange(s-w, s), AxisRange())
		return []*Node{KeyScores(ClusterScores(q, cent, counts, Scale(d)), labels)}
	}, keys)
	scores := flat(out[0])
	allFinite(t, "scores", scores)
	for _, sp := range []float64{0.5, 0.7, 0.8, 0.9} {
		thr, kept, err := CalibrateThreshold(scores, sp)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range scores {
			if x > thr {
				n++
			}
		}
		got := 1 - float64(n)/float64(len(scores))
		if math.Abs(got-sp) > 0.02 || math.Abs(kept-(1-got)) > 1e-9 {
			t.Errorf("sparsity %.2f: dropped %.3f (kept reported %.3f)", sp, got, kept)
		}
	}
	if _, _, err := CalibrateThreshold([]float32{1, float32(math.NaN())}, 0.5); err == nil {
		t.Error("NaN score: no error")
	}
	if _, _, err := CalibrateThreshold(scores, 1); err == nil {
		t.Error("sparsity 1: no error")
	}
}

// TestEmptyClustersAndHugeLogits: more centroids than distinct keys leaves clusters empty; queries of
// enormous norm saturate the exponentials; nothing becomes NaN or Inf.
func TestEmptyClustersAndHugeLogits(t *testing.T) {
	const h, s, d, k = 1, 32, 8, 16
	kv := make([]float32, h*s*d)
	for i := range s {
		kv[i*d+i%4] = 1 // only 4 distinct keys
	}
	keys := tensors.FromFlatDataAndDimensions(kv, h, s, d)
	rng := rand.New(rand.NewPCG(7, 8))
	q := randn(rng, 1e4, h, 3, d)
	out := MustExecOnceN(testBackend(), func(q, keys *Node) []*Node {
		cent, labels, counts := KMeans(keys, k, 5)
		lp := LogClusterProb(q, cent, counts, Scale(d))
		scores := ClusterScores(q, cent, counts, Scale(d))
		ks := KeyScores(scores, labels)
		idx, valid, _ := Compact(ThresholdMask(ks, Const(q.Graph(), float32(0.01))), s)
		sq := SparseAttention(q, keys, keys, idx, valid, Scale(d))
		none := SparseAttention(q, keys, keys, idx, ZerosLike(valid), Scale(d)) // no key kept at all
		merged := Merge(none, DenseAttention(q, keys, keys, nil, Scale(d)))
		return []*Node{counts, ConvertDType(Exp(lp), dtypes.Float32), scores, sq.Out, sq.LSE, none.Out, merged.Out}
	}, q, keys)
	counts := flat(out[0])
	empty := 0
	for _, c := range counts {
		if c == 0 {
			empty++
		}
	}
	if empty == 0 {
		t.Fatalf("expected empty clusters, counts %v", counts)
	}
	for i, name := range []string{"counts", "probabilities", "scores", "sparse out", "sparse lse", "empty-set out", "merged"} {
		allFinite(t, name, flat(out[i]))
	}
	// Empty clusters have probability exactly 0.
	p := flat(out[1])
	for j, c := range counts {
		if c == 0 && p[j] != 0 {
			t.Errorf("empty cluster %d has probability %v", j, p[j])
		}
	}
}

func shapesOf(dt dtypes.DType, dims ...int) shapes.Shape { return shapes.Make(dt, dims...) }

// TestKMeansSeparatesBlobs: three well-separated directions come out as three clusters.
func TestKMeansSeparatesBlobs(t *testing.T) {
	const s, d = 90, 8
	rng := rand.New(rand.NewPCG(9, 10))
	kv := make([]float32, s*d)
	for i := range s {
		blob := (i * 7) % 3 // interleaved, so the evenly spaced seeds are not trivially one per blob
		for j := range d {
			kv[i*d+j] = float32(rng.NormFloat64()) * 0.05
		}
		kv[i*d+blob] += 3
	}
	keys := tensors.FromFlatDataAndDimensions(kv, 1, s, d)
	out := MustExecOnceN(testBackend(), func(keys *Node) []*Node {
		_, labels, counts := KMeans(keys, 3, 10)
		return []*Node{labels, counts}
	}, keys)
	labels := tensors.MustCopyFlatData[int32](out[0])
	byBlob := map[int]int32{}
	for i, l := range labels {
		blob := (i * 7) % 3
		if prev, ok := byBlob[blob]; ok && prev != l {
			t.Fatalf("blob %d split across clusters %d and %d", blob, prev, l)
		}
		byBlob[blob] = l
	}
	if byBlob[0] == byBlob[1] || byBlob[1] == byBlob[2] || byBlob[0] == byBlob[2] {
		t.Fatalf("blobs merged: %v", byBlob)
	}
	if c := flat(out[1]); c[0]+c[1]+c[2] != s {
		t.Fatalf("counts %v do not add up to %d", c, s)
	}
}

// TestCompact lists kept keys in order, drops those beyond the budget, and marks unused slots invalid.
func TestCompact(t *testing.T) {
	maskV := [][]bool{{false, true, true, false, true, false}, {true, true, true, true, true, false}}
	out := MustExecOnceN(testBackend(), func(g *Graph) []*Node {
		idx, valid, kept := Compact(Const(g, maskV), 4)
		return []*Node{idx, ConvertDType(valid, dtypes.Int32), kept}
	})
	idx := tensors.MustCopyFlatData[int32](out[0])
	valid := tensors.MustCopyFlatData[int32](out[1])
	kept := tensors.MustCopyFlatData[int32](out[2])
	wantIdx := []int32{1, 2, 4, 0, 0, 1, 2, 3}
	wantValid := []int32{1, 1, 1, 0, 1, 1, 1, 1}
	for i := range wantIdx {
		if idx[i] != wantIdx[i] || valid[i] != wantValid[i] {
			t.Fatalf("idx %v valid %v, want %v %v", idx, valid, wantIdx, wantValid)
		}
	}
	if kept[0] != 3 || kept[1] != 5 {
		t.Fatalf("kept %v, want [3 5]", kept)
	}
}
