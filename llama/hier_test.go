package llama

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// hierFixture prefills the first ctxLen tokens of the bundled Python file and returns the ids (ctxLen +
// decode of them).
func hierFixture(t *testing.T, r *Runner, ctxLen, decode int) (ids []int, p *Prefix) {
	t.Helper()
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids = cases[3].IDs[:ctxLen+decode]
	if p, err = r.Prefill(context.Background(), ids[:ctxLen]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Free)
	return ids, p
}

// TestHierarchicalPrefix: with the hierarchical index keeping every key (budget 1, every fine centroid
// scored) the squeezed prefix gives the dense logits and greedy tokens; with a 30% budget and the
// default coarse keep fraction (0.6 of the fine centroids scored) the logits stay finite and mostly
// agree on the top token. SqueezeInfo counts the coarse and the scored fine centroids.
func TestHierarchicalPrefix(t *testing.T) {
	const ctxLen, decode = 700, 12
	r := testRunner(t, dtypes.Float32, Options{})
	ids, p := hierFixture(t, r, ctxLen, decode)
	seq := r.NewSequence()
	want, err := seq.AppendAllLogits(context.Background(), ids)
	seq.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []SqueezeOptions{{Budget: 1, Hierarchical: true, CoarseKeep: 1}, {Budget: 0.3, Hierarchical: true}} {
		if err := p.Squeeze(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		info, _ := p.SqueezeInfo()
		sq := p.sq
		wantSlots := int(math.Ceil(info.Options.CoarseKeep * float64(sq.k)))
		if info.CoarseCentroids != 10 || info.Centroids != 51 || info.ScoredCentroids != wantSlots || sq.k1 != 10 ||
			math.Abs(info.KeptFraction-(float64(info.Budget+info.Window+info.CoarseCentroids+info.ScoredCentroids))/float64(ctxLen-1)) > 1e-12 {
			t.Errorf("%v: info %+v", opts, info)
		}
		got := decodeLogits(t, p, ids[ctxLen:])
		worst, agree := 0.0, 0
		for i, row := range got {
			worst = math.Max(worst, maxDiff(row, want[ctxLen+i])/maxAbs(want[ctxLen+i]))
			if argmax(row) == argmax(want[ctxLen+i]) {
				agree++
			}
		}
		t.Logf("%v: %d centroids, %d coarse, %d scored per step, kept fraction %.3f (clustering %v); relative logit error %.2e, top-1 agrees at %d/%d",
			info.Options, info.Centroids, info.CoarseCentroids, info.ScoredCentroids, info.KeptFraction, info.ClusterTime, worst, agree, len(got))
		if opts.Budget == 1 && (worst > 1e-4 || agree != len(got)) {
			t.Errorf("every key kept: logits differ from dense by %.2e (relative), top-1 agrees at %d/%d", worst, agree, len(got))
		}
		if agree < len(got)*7/10 {
			t.Errorf("%v: top-1 agrees at only %d/%d positions", opts, agree, len(got))
		}
	}
}

// TestHierarchicalCalibration: the calibrated threshold of a hierarchical index drops the target
// fraction of the clustered keys for the calibration queries within 2 points, counted key by key from
// the labels (the fine clusters the coarse pass prunes count as dropped, and there are some); the online
// selection (squeeze.Select over the packed index, as the step graph runs it) keeps that fraction for
// the same queries; decoding over the index stays finite.
func TestHierarchicalCalibration(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	ids, p := hierFixture(t, r, calibCtx, 4)
	const sparsity = 0.7
	if err := p.Squeeze(context.Background(), SqueezeOptions{Sparsity: sparsity, Hierarchical: true}); err != nil {
		t.Fatal(err)
	}
	sq := p.sq
	scores, counts, _, err := p.calibrationScores(sq, false)
	if err != nil {
		t.Fatal(err)
	}
	L, kvh, k := r.cfg.NumHiddenLayers, r.cfg.NumKeyValueHeads, sq.k
	var keyScores []float32
	pruned := 0
	for l := range L {
		labels, err := tensors.CopyFlatData[int32](sq.labels[l])
		if err != nil {
			t.Fatal(err)
		}
		for h := range kvh {
			scored := 0
			for c := range k {
				i := (l*kvh+h)*k + c
				switch s := scores[i]; {
				case math.IsInf(float64(s), -1):
					if counts[i] > 0 {
						pruned++
					}
				case math.IsNaN(float64(s)) || math.IsInf(float64(s), 1) || s < 0 || counts[i] == 0:
					t.Fatalf("layer %d head %d cluster %d: score %g with %g keys", l, h, c, s, counts[i])
				default:
					scored++
				}
			}
			if scored > sq.slots {
				t.Errorf("layer %d head %d: %d fine clusters scored, %d slots", l, h, scored, sq.slots)
			}
			for j := range sq.clustered {
				keyScores = append(keyScores, scores[(l*kvh+h)*k+int(labels[h*sq.capacity+j])])
			}
		}
	}
	n := 0
	for _, s := range keyScores {
		if s > sq.threshold {
			n++
		}
	}
	got := float64(n) / float64(len(keyScores))
	online := hierOnlineKept(t, p)
	info, _ := p.SqueezeInfo()
	t.Logf("sparsity %.2f, coarse keep %g (%d of %d fine centroids scored, %d coarse): threshold %.3g, the calibration queries keep %.4f of %d keys "+
		"(%d non-empty fine clusters pruned); the online selection keeps %.4f; kept fraction %.3f; clustering %v, calibration %v",
		sparsity, info.Options.CoarseKeep, sq.slots, k, sq.k1, sq.threshold, got, len(keyScores), pruned, online, info.KeptFraction,
		info.ClusterTime, info.CalibrateTime)
	if math.Abs((1-got)-sparsity) > 0.02 || math.Abs(got-sq.calibratedKept) > 1e-9 {
		t.Errorf("the calibration queries drop %.4f (reported kept %.4f), target %.2f", 1-got, sq.calibratedKept, sparsity)
	}
	if pruned == 0 {
		t.Error("the coarse pass pruned no fine cluster")
	}
	if math.Abs(online-got) > 0.02 {
		t.Errorf("the online selection keeps %.4f of the keys for the calibration queries, the calibration %.4f", online, got)
	}
	decodeLogits(t, p, ids[calibCtx:])
}

// hierOnlineKept runs the window's queries through squeeze.Select over the prefix's packed index with
// its threshold, as one step (one selection per KV head for all of them), and returns the mean fraction
// of the clustered keys kept over layers and heads.
func hierOnlineKept(t *testing.T, p *Prefix) float64 {
	t.Helper()
	r, sq := p.r, p.sq
	c := r.cfg
	nw := len(r.weights.Tensors)
	L := c.NumHiddenLayers
	e, err := graph.NewExec(r.backend, func(g *graph.Graph, in []*graph.Node) []*graph.Node {
		w := unpackWeights(c, in[:nw])
		invFreq, toks, start, threshold := in[nw], in[nw+1], in[nw+2], in[nw+3]
		rest := in[nw+4:]
		queries, _ := windowForward(c, w, toks, start, invFreq, rest[:L], rest[L:2*L])
		var out []*graph.Node
		for l, q := range queries {
			ix := unpackIndex(squeeze.LayerIndex{Centroids: rest[2*L+l], Counts: rest[3*L+l], Starts: rest[4*L+l], Order: rest[5*L+l],
				Clustered: start, Window: graph.Const(g, int32(sq.window)), Budget: graph.Const(g, int32(sq.budget)),
				Threshold: threshold, MaxKept: sq.maxKept})
			_, _, kept := squeeze.Select(groupQueries(c, q), ix, 1/math.Sqrt(float64(c.HeadDim)))
			out = append(out, kept) // [numKVHeads]
		}
		return out
	})
	if err != nil {
		t.Fatal(err)
	}
	args := []any{}
	for _, w := range r.weights.Tensors {
		args = append(args, w)
	}
	invFreq, _ := r.invFreq(p.cachedRows())
	var toks []int32
	for _, x := range p.tokens[sq.clustered:p.cachedRows()] {
		toks = append(toks, int32(x))
	}
	args = append(args, invFreq, toks, int32(sq.clustered), sq.threshold)
	for _, ts := range [][]*tensors.Tensor{p.kv.k, p.kv.v, sq.centroids, sq.counts, sq.starts, sq.order} {
		for _, x := range ts {
			args = append(args, x)
		}
	}
	out, err := e.Call(args...)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for l := range L {
		kept, _ := tensors.CopyFlatData[int32](out[l])
		for _, n := range kept {
			total += float64(int(n)-sq.window) / float64(sq.clustered)
		}
	}
	return total / float64(L*c.NumKeyValueHeads)
}

// TestHierarchicalSqueezeStore: a stored hierarchical index loads into a prefix rebuilt from its KV
// blobs and gives bit-identical logits; re-exporting gives the same bytes; damaged coarse levels are
// refused; a flat index's blobs do not load as a hierarchical index, nor the reverse.
func TestHierarchicalSqueezeStore(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	ids, p := hierFixture(t, r, 690, 6)
	ctxLen := 690
	opts := SqueezeOptions{Sparsity: 0.7, Hierarchical: true}
	flatOpts := SqueezeOptions{Sparsity: 0.7}
	blobs, shapes, blobDTypes, geometry := squeezeAndLayout(t, r, p, ctxLen, opts)
	_, _, flatGeometry, _ := r.SqueezeLayout(ctxLen, flatOpts)
	L := r.cfg.NumHiddenLayers
	if len(blobs) != 5*L+1 || len(shapes) != len(blobs) || blobDTypes[3] != "bf16" || blobDTypes[4] != "i32" ||
		shapes[3][1] != p.sq.k1 || !strings.Contains(geometry, "hierarchical coarse=0.01 coarse_keep=0.6") ||
		!strings.Contains(geometry, " k1=10 slots=31") || geometry == flatGeometry {
		t.Fatalf("%d blobs, layout %v %v, geometry %q (flat %q)", len(blobs), shapes[:5], blobDTypes[:5], geometry, flatGeometry)
	}
	total := blobBytes(t, blobs, shapes, blobDTypes)
	t.Logf("hierarchical index of %d cached rows: %d bytes (%.1f bytes a token); geometry %q", ctxLen-1, total, float64(total)/float64(ctxLen-1), geometry)

	q := reloadedPrefix(t, r, p, ids[:ctxLen], opts, blobs)
	defer q.Free()
	info, _ := q.SqueezeInfo()
	want, _ := p.SqueezeInfo()
	if !info.Loaded || info.Threshold != want.Threshold || info.KeptFraction != want.KeptFraction || info.CoarseCentroids != want.CoarseCentroids {
		t.Errorf("loaded info %+v, computed %+v", info, want)
	}
	checkLoadedIndex(t, p, q, blobs, ids[ctxLen:])

	k1 := p.sq.k1
	children := func(bl [][]byte, l, i int) uint32 { return binary.LittleEndian.Uint32(bl[5*l+4][4*i:]) }
	damage := []struct {
		name string
		edit func(bl [][]byte)
		want string
	}{
		{"child moved", func(bl [][]byte) {
			binary.LittleEndian.PutUint32(bl[4][0:], children(bl, 0, 0)+1)
		}, "children"},
		{"negative children", func(bl [][]byte) { binary.LittleEndian.PutUint32(bl[9][4*(k1-1):], 0xffffffff) }, "-1 children"},
		{"NaN coarse centroid", func(bl [][]byte) { binary.LittleEndian.PutUint16(bl[8][6:], 0x7fc0) }, "coarse centroid"},
		{"coarse level dropped", func(bl [][]byte) {}, "blobs, want"},
	}
	for _, d := range damage {
		bl := make([][]byte, len(blobs))
		for i := range blobs {
			bl[i] = bytes.Clone(blobs[i])
		}
		d.edit(bl)
		if d.name == "coarse level dropped" { // the flat layout of the same index
			var flat [][]byte
			for l := range L {
				flat = append(flat, bl[5*l:5*l+3]...)
			}
			bl = append(flat, bl[5*L])
		}
		err := q.LoadSqueeze(opts, bl)
		if err == nil || !strings.Contains(err.Error(), d.want) {
			t.Errorf("%s: error %v, want one mentioning %q", d.name, err, d.want)
		}
		if q.sq == nil || !q.sq.loaded || q.sq.k1 != k1 {
			t.Fatalf("%s: the refused index replaced the good one", d.name)
		}
	}
	// A flat index's blobs as a hierarchical index, and the hierarchical blobs as a flat one.
	if err := p.Squeeze(context.Background(), flatOpts); err != nil {
		t.Fatal(err)
	}
	flatBlobs, err := p.SqueezeBlobs()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.LoadSqueeze(opts, flatBlobs); err == nil || !strings.Contains(err.Error(), "blobs, want") {
		t.Errorf("a flat index loaded as a hierarchical one: %v", err)
	}
	if err := q.LoadSqueeze(flatOpts, blobs); err == nil || !strings.Contains(err.Error(), "blobs, want") {
		t.Errorf("a hierarchical index loaded as a flat one: %v", err)
	}
}

// TestRoundBF16: the centroids' rounding on the bits is float32→bfloat16→float32 conversion's, bit for
// bit (ties to even, both zeros, magnitudes from 1e-10 to 1e10).
func TestRoundBF16(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, 100000)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(21)-10)))
	}
	v[0], v[1], v[2], v[3] = 0, float32(math.Copysign(0, -1)), 1.00390625, 1.01171875 // ties: down and up to even
	out := graph.MustExecOnceN(goBackend(t), func(x *graph.Node) []*graph.Node {
		return []*graph.Node{roundBF16(x), graph.ConvertDType(graph.ConvertDType(x, dtypes.BFloat16), dtypes.Float32)}
	}, tensors.FromValue(v))
	a, b := tensors.MustCopyFlatData[float32](out[0]), tensors.MustCopyFlatData[float32](out[1])
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("%d: %g rounds to %g, the conversion to %g", i, v[i], a[i], b[i])
		}
	}
}
