package llama

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// calibCtx is the fixed context of the calibration tests: 1,537 tokens of a Python file (1,536 cached
// rows, filling their capacity bucket: 1,436 clustered keys and a 100-token window), then calibDecode
// tokens fed one at a time.
const calibCtx, calibDecode = 1537, 24

// calibFixture returns the token ids and the dense logits of every position (one forward).
func calibFixture(t *testing.T, r *Runner) (ids []int, dense [][]float32, p *Prefix) {
	t.Helper()
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids = cases[3].IDs[:calibCtx+calibDecode]
	seq := r.NewSequence()
	defer seq.Close()
	if dense, err = seq.AppendAllLogits(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	if p, err = r.Prefill(context.Background(), ids[:calibCtx]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Free)
	return ids, dense, p
}

// decodeLogits feeds the tokens one at a time (each step selects keys with its own queries).
func decodeLogits(t testing.TB, p *Prefix, tokens []int) [][]float32 {
	t.Helper()
	s := p.NewSequence()
	defer s.Close()
	var out [][]float32
	for _, tok := range tokens {
		l, err := s.Append(context.Background(), []int{tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range l {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("non-finite logit %g", x)
			}
		}
		out = append(out, l)
	}
	return out
}

// TestCalibration: the recomputed window gives exactly the logits of a normal forward (so its queries
// are the forward's), and the calibrated threshold drops the target fraction of the clustered keys for
// those queries within 2 points, counted key by key from the labels.
func TestCalibration(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	_, dense, p := calibFixture(t, r)
	if err := p.Squeeze(context.Background(), SqueezeOptions{Sparsity: 0.7}); err != nil {
		t.Fatal(err)
	}
	sq := p.sq
	if sq.window != 100 || sq.clustered != calibCtx-1-100 {
		t.Fatalf("window %d, clustered %d", sq.window, sq.clustered)
	}
	scores, counts, logits, err := p.calibrationScores(sq, true)
	if err != nil {
		t.Fatal(err)
	}
	v := r.cfg.VocabSize
	worst := 0.0
	for i := range sq.window {
		want := dense[sq.clustered+i]
		worst = math.Max(worst, maxDiff(logits[i*v:(i+1)*v], want)/maxAbs(want))
	}
	if worst > 1e-4 {
		t.Errorf("window logits differ from the forward's by %.2e (relative)", worst)
	}
	for i, s := range scores {
		if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) || s < 0 || (counts[i] == 0 && s != 0) {
			t.Fatalf("cluster %d: score %g with %g keys", i, s, counts[i])
		}
	}

	// Every clustered key's score, from its label.
	L, kvh, k := r.cfg.NumHiddenLayers, r.cfg.NumKeyValueHeads, sq.k
	var keyScores []float32
	for l := range L {
		labels, err := tensors.CopyFlatData[int32](sq.labels[l])
		if err != nil {
			t.Fatal(err)
		}
		for h := range kvh {
			for j := range sq.clustered {
				keyScores = append(keyScores, scores[(l*kvh+h)*k+int(labels[h*sq.capacity+j])])
			}
		}
	}
	for _, sparsity := range []float64{0.5, 0.7, 0.8, 0.9} {
		thr, kept, err := squeeze.CalibrateClusters(scores, counts, sparsity)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range keyScores {
			if s > thr {
				n++
			}
		}
		got := float64(n) / float64(len(keyScores))
		t.Logf("sparsity %.2f: threshold %.3g, calibration queries keep %.4f of %d keys (target %.2f)",
			sparsity, thr, got, len(keyScores), 1-sparsity)
		if math.Abs((1-got)-sparsity) > 0.02 || math.Abs(got-kept) > 1e-9 {
			t.Errorf("sparsity %.2f: the calibration queries drop %.4f (reported kept %.4f)", sparsity, 1-got, kept)
		}
		if sparsity == 0.7 && (thr != sq.threshold || kept != sq.calibratedKept) {
			t.Errorf("Squeeze set threshold %g kept %g, want %g %g", sq.threshold, sq.calibratedKept, thr, kept)
		}
	}
	info, _ := p.SqueezeInfo()
	wantFrac := (info.CalibratedKept*float64(info.Clustered) + float64(info.Window+info.Centroids)) / float64(calibCtx-1)
	if math.Abs(info.KeptFraction-wantFrac) > 1e-12 || info.CalibrateTime <= 0 || info.Loaded {
		t.Errorf("info %+v", info)
	}
	t.Logf("calibrated 0.70: %d clustered keys, %d centroids, kept list %d (budget %d), kept fraction %.3f; clustering %v, calibration %v",
		info.Clustered, info.Centroids, sq.maxKept, info.Budget, info.KeptFraction, info.ClusterTime, info.CalibrateTime)
}

func TestSqueezeOptions(t *testing.T) {
	for _, tc := range []struct {
		opts SqueezeOptions
		want string
	}{
		{SqueezeOptions{}, "neither"},
		{SqueezeOptions{Budget: 0.3, Sparsity: 0.7}, "both"},
		{SqueezeOptions{Sparsity: 1}, "sparsity 1 outside"},
		{SqueezeOptions{Sparsity: -0.1}, "sparsity -0.1 outside"},
		{SqueezeOptions{Budget: 1.5}, "budget 1.5 outside"},
		{SqueezeOptions{Sparsity: math.NaN()}, "NaN"},
		{SqueezeOptions{Sparsity: 0.5, Centroids: 0.9}, "centroids"},
		{SqueezeOptions{Sparsity: 0.5, Window: -1}, "window"},
		{SqueezeOptions{Sparsity: 0.5, CoarseKeep: 0.5}, "hierarchical index only"},
		{SqueezeOptions{Sparsity: 0.5, Hierarchical: true, CoarseCentroids: 0.05}, "coarse centroids fraction 0.05"},
		{SqueezeOptions{Sparsity: 0.5, Hierarchical: true, Centroids: 0.01}, "coarse centroids fraction 0.01"},
		{SqueezeOptions{Budget: 0.5, Hierarchical: true, CoarseKeep: 1.5}, "coarse keep fraction 1.5"},
		{SqueezeOptions{Budget: 0.5, Hierarchical: true, CoarseKeep: math.NaN()}, "coarse keep fraction NaN"},
		{SqueezeOptions{Budget: 0.5, Mass: true}, "attention-mass selection needs a sparsity"},
		{SqueezeOptions{Sparsity: 0.5, Mass: true, Hierarchical: true}, "attention-mass selection over a hierarchical index"},
	} {
		if _, err := tc.opts.Normalized(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", tc.opts, err, tc.want)
		}
	}
	o, err := SqueezeOptions{Sparsity: 0.7}.Normalized()
	if err != nil || o.String() != "budget=0 sparsity=0.7 centroids=0.05 window=100 iterations=10" {
		t.Errorf("%v %v", o, err)
	}
	// Hierarchical defaults: 1% coarse centroids; twice the kept fraction of the fine ones scored, in [0.5, 1].
	for _, tc := range []struct {
		opts SqueezeOptions
		want string
	}{
		{SqueezeOptions{Sparsity: 0.7, Hierarchical: true}, "budget=0 sparsity=0.7 centroids=0.05 window=100 iterations=10 hierarchical coarse=0.01 coarse_keep=0.6"},
		{SqueezeOptions{Sparsity: 0.9, Hierarchical: true}, "budget=0 sparsity=0.9 centroids=0.05 window=100 iterations=10 hierarchical coarse=0.01 coarse_keep=0.5"},
		{SqueezeOptions{Budget: 1, Hierarchical: true, CoarseCentroids: 0.02}, "budget=1 sparsity=0 centroids=0.05 window=100 iterations=10 hierarchical coarse=0.02 coarse_keep=1"},
		{SqueezeOptions{Sparsity: 0.7, Mass: true}, "budget=0 sparsity=0.7 centroids=0.05 window=100 iterations=10 mass"},
	} {
		if o, err := tc.opts.Normalized(); err != nil || o.String() != tc.want {
			t.Errorf("%+v: %q %v, want %q", tc.opts, o, err, tc.want)
		}
	}
}

// TestCalibratedDecode: decoding over a calibrated index stays finite and close to dense; with the
// threshold at -Inf (every key passes) it equals dense attention, and at +Inf (only the window) it does
// not, so the threshold reaches the step graph.
func TestCalibratedDecode(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	ids, dense, p := calibFixture(t, r)
	// The context's last token is pending: the first Append feeds it before feed[0].
	want, feed := dense[calibCtx:], ids[calibCtx:]
	for _, sparsity := range []float64{0.2, 0.7} {
		if err := p.Squeeze(context.Background(), SqueezeOptions{Sparsity: sparsity}); err != nil {
			t.Fatal(err)
		}
		info, _ := p.SqueezeInfo()
		got := decodeLogits(t, p, feed)
		worst, agree := 0.0, 0
		for i, row := range got {
			worst = math.Max(worst, maxDiff(row, want[i])/maxAbs(want[i]))
			if argmax(row) == argmax(want[i]) {
				agree++
			}
		}
		online, over, clipped := onlineKept(t, p, feed)
		t.Logf("sparsity %.1f: threshold %.3g, calibrated kept %.3f, kept fraction %.3f; decode steps keep %.3f, %d of %d head-steps "+
			"pass more than the budget %d, which leaves out %.4f of the passing keys; relative logit error %.2e, top-1 agrees at %d/%d",
			sparsity, info.Threshold, info.CalibratedKept, info.KeptFraction, online, over, len(feed)*r.cfg.NumHiddenLayers*r.cfg.NumKeyValueHeads,
			info.Budget, clipped, worst, agree, len(got))
		// The 16M model is sensitive to dropped keys: at sparsity 0.7 its top-1 agrees with dense at 19 of
		// these 24 positions.
		if minAgree := map[float64]int{0.2: 22, 0.7: 16}[sparsity]; agree < minAgree {
			t.Errorf("sparsity %.1f: top-1 agrees at only %d/%d positions", sparsity, agree, len(got))
		}
		if clipped > 0.02 {
			t.Errorf("sparsity %.1f: the kept list leaves out %.3f of the keys above the threshold", sparsity, clipped)
		}
	}
	// Sparsity 0.2: the kept list (1.25 × 80% of the capacity) holds every clustered key.
	if err := p.Squeeze(context.Background(), SqueezeOptions{Sparsity: 0.2}); err != nil {
		t.Fatal(err)
	}
	if p.sq.budget < p.sq.clustered {
		t.Fatalf("budget %d < clustered %d", p.sq.budget, p.sq.clustered)
	}
	for _, thr := range []float32{float32(math.Inf(-1)), float32(math.Inf(1))} {
		p.sq.threshold = thr
		got := decodeLogits(t, p, feed[:6])
		worst := 0.0
		for i, row := range got {
			worst = math.Max(worst, maxDiff(row, want[i])/maxAbs(want[i]))
		}
		t.Logf("threshold %g: relative logit error %.2e", thr, worst)
		if thr < 0 && worst > 1e-4 {
			t.Errorf("threshold -Inf (every key): logits differ from dense by %.2e", worst)
		}
		if thr > 0 && worst < 1e-3 {
			t.Errorf("threshold +Inf (window only): logits equal dense (%.2e): the threshold is not applied", worst)
		}
	}
}

// TestSqueezeStore: a stored index (compact dtypes) loads into a prefix rebuilt from its KV blobs and
// gives bit-identical logits; re-exporting it gives the same bytes; damaged contents are refused.
func TestSqueezeStore(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:700]
	ctxLen := 690
	opts := SqueezeOptions{Sparsity: 0.7}
	p, err := r.Prefill(context.Background(), ids[:ctxLen])
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	blobs, shapes, blobDTypes, geometry := squeezeAndLayout(t, r, p, ctxLen, opts)
	total := blobBytes(t, blobs, shapes, blobDTypes)
	t.Logf("index of %d cached rows: %d bytes (%.1f bytes a token); geometry %q", ctxLen-1, total,
		float64(total)/float64(ctxLen-1), geometry)
	if blobDTypes[0] != "bf16" || blobDTypes[1] != "i32" || blobDTypes[2] != "i16" || !strings.Contains(geometry, "sparsity=0.7") {
		t.Errorf("layout %v, geometry %q", blobDTypes, geometry)
	}

	q := reloadedPrefix(t, r, p, ids[:ctxLen], opts, blobs)
	defer q.Free()
	info, _ := q.SqueezeInfo()
	want, _ := p.SqueezeInfo()
	if !info.Loaded || info.Threshold != want.Threshold || info.KeptFraction != want.KeptFraction || info.ClusterTime != 0 {
		t.Errorf("loaded info %+v, computed %+v", info, want)
	}
	checkLoadedIndex(t, p, q, blobs, ids[ctxLen:])

	// Damaged contents: each is refused with a message naming it, and q keeps its index.
	k := p.sq.k
	damage := []struct {
		name string
		edit func(bl [][]byte)
		want string
	}{
		{"label out of range", func(bl [][]byte) { binary.LittleEndian.PutUint16(bl[2][6:], uint16(k)) }, "label"},
		{"negative label", func(bl [][]byte) { binary.LittleEndian.PutUint16(bl[5][0:], 0xffff) }, "label -1"},
		{"label moved", func(bl [][]byte) {
			x := binary.LittleEndian.Uint16(bl[2][0:])
			binary.LittleEndian.PutUint16(bl[2][0:], uint16((int(x)+1)%k))
		}, "count"},
		{"count changed", func(bl [][]byte) {
			binary.LittleEndian.PutUint32(bl[4][8:], binary.LittleEndian.Uint32(bl[4][8:])+1)
		}, "count"},
		{"NaN centroid", func(bl [][]byte) { binary.LittleEndian.PutUint16(bl[3][10:], 0x7fc0) }, "centroid"},
		{"NaN threshold", func(bl [][]byte) {
			binary.LittleEndian.PutUint64(bl[len(bl)-1], math.Float64bits(math.NaN()))
		}, "threshold"},
		{"kept above 1", func(bl [][]byte) {
			binary.LittleEndian.PutUint64(bl[len(bl)-1][8:], math.Float64bits(1.5))
		}, "kept fraction"},
		{"truncated blob", func(bl [][]byte) { bl[7] = bl[7][:len(bl[7])-2] }, "bytes"},
		{"other sparsity", func(bl [][]byte) {
			binary.LittleEndian.PutUint64(bl[len(bl)-1][16:], math.Float64bits(0.9))
		}, "made with sparsity 0.9"},
	}
	for _, d := range damage {
		bl := make([][]byte, len(blobs))
		for i := range blobs {
			bl[i] = bytes.Clone(blobs[i])
		}
		d.edit(bl)
		err := q.LoadSqueeze(opts, bl)
		if err == nil || !strings.Contains(err.Error(), d.want) {
			t.Errorf("%s: error %v, want one mentioning %q", d.name, err, d.want)
		}
		if q.sq == nil || !q.sq.loaded {
			t.Fatalf("%s: the refused index replaced the good one", d.name)
		}
	}
	// The same blobs for other options (same shapes: the budget mode at 0.3) are refused too.
	if err := q.LoadSqueeze(SqueezeOptions{Budget: 0.3}, blobs); err == nil || !strings.Contains(err.Error(), "want 0 and 0.3") {
		t.Errorf("loading a calibrated index as a fixed-budget one: %v", err)
	}
}

// onlineKept measures, for tokens continuing the prefix (teacher-forced, one decode step each), the
// fraction of clustered keys whose cluster's score for that step's queries exceeds the threshold, how
// often a head's passing keys exceed the budget (the static kept list), and the fraction of all passing
// keys that the budget then leaves out.
func onlineKept(t *testing.T, p *Prefix, tokens []int) (mean float64, overBudget int, clipped float64) {
	t.Helper()
	r, sq := p.r, p.sq
	c := r.cfg
	nw := len(r.weights.Tensors)
	L := c.NumHiddenLayers
	e, err := graph.NewExec(r.backend, func(g *graph.Graph, in []*graph.Node) []*graph.Node {
		w := unpackWeights(c, in[:nw])
		invFreq, toks, start := in[nw], in[nw+1], in[nw+2]
		rest := in[nw+3:]
		queries, _ := windowForward(c, w, toks, start, invFreq, rest[:L], rest[L:2*L])
		var out []*graph.Node
		n := toks.Shape().Dimensions[0]
		for l, q := range queries {
			qg := groupQueries(c, q) // [numKVHeads, n*group, headDim]: token i's heads are rows i*group...
			logp := squeeze.LogClusterProb(qg, rest[2*L+l], rest[3*L+l], 1/math.Sqrt(float64(c.HeadDim)))
			p := graph.Reshape(graph.Exp(logp), c.NumKeyValueHeads, n, c.GroupSize(), sq.k)
			out = append(out, graph.ReduceMean(p, 2)) // [numKVHeads, n, K]: one decode step's scores
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
	invFreq, _ := r.invFreq(0)
	toks := make([]int32, len(tokens))
	for i, x := range tokens {
		toks[i] = int32(x)
	}
	args = append(args, invFreq, toks, int32(p.cachedRows()))
	for _, ts := range [][]*tensors.Tensor{p.kv.k, p.kv.v, sq.centroids, sq.counts} {
		for _, x := range ts {
			args = append(args, x)
		}
	}
	out, err := e.Call(args...)
	if err != nil {
		t.Fatal(err)
	}
	n, kvh := len(tokens), c.NumKeyValueHeads
	total, passed, cut := 0.0, 0.0, 0.0
	for l := range L {
		scores, _ := tensors.CopyFlatData[float32](out[l])
		counts, _ := tensors.CopyFlatData[float32](sq.counts[l])
		for h := range kvh {
			for i := range n {
				kept := 0.0
				for cl := range sq.k {
					if scores[(h*n+i)*sq.k+cl] > sq.threshold {
						kept += float64(counts[h*sq.k+cl])
					}
				}
				if kept > float64(sq.budget) {
					overBudget++
					cut += kept - float64(sq.budget)
				}
				passed += kept
				total += kept / float64(sq.clustered)
			}
		}
	}
	return total / float64(L*kvh*n), overBudget, cut / max(passed, 1)
}

// checkLoadedIndex checks that q's index, loaded from blobs (p's), stores back to the same blobs and
// decodes tokens to exactly p's logits.
func checkLoadedIndex(t *testing.T, p, q *Prefix, blobs [][]byte, tokens []int) {
	t.Helper()
	again, err := q.SqueezeBlobs()
	if err != nil {
		t.Fatal(err)
	}
	for i := range blobs {
		if !bytes.Equal(again[i], blobs[i]) {
			t.Errorf("blob %d differs after a round trip", i)
		}
	}
	a, b := decodeLogits(t, p, tokens), decodeLogits(t, q, tokens)
	for i := range a {
		if d := maxDiff(a[i], b[i]); d != 0 {
			t.Errorf("step %d: logits of the loaded index differ by %g", i, d)
		}
	}
}

// blobBytes checks that every squeeze blob has the size its layout (SqueezeLayout) says, and returns
// their total.
func blobBytes(t *testing.T, blobs [][]byte, shapes [][]int, blobDTypes []string) int {
	t.Helper()
	size := map[string]int{"bf16": 2, "i16": 2, "i32": 4, "f64": 8}
	total := 0
	for i, b := range blobs {
		n := size[blobDTypes[i]]
		for _, d := range shapes[i] {
			n *= d
		}
		if len(b) != n {
			t.Fatalf("blob %d: %d bytes for %v %s", i, len(b), shapes[i], blobDTypes[i])
		}
		total += n
	}
	return total
}

// reloadedPrefix is p rebuilt from its stored KV blobs (tokens are its context), with the squeeze index
// loaded from blobs; the caller frees it.
func reloadedPrefix(t *testing.T, r *Runner, p *Prefix, tokens []int, opts SqueezeOptions, blobs [][]byte) *Prefix {
	t.Helper()
	kvBlobs, err := p.Blobs()
	if err != nil {
		t.Fatal(err)
	}
	q, err := r.PrefixFromBlobs(tokens, kvBlobs)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.LoadSqueeze(opts, blobs); err != nil {
		q.Free()
		t.Fatal(err)
	}
	return q
}

// squeezeAndLayout squeezes p with opts and returns its index blobs with the runner's layout for them
// (shapes, dtypes, geometry), failing the test on any error.
func squeezeAndLayout(t *testing.T, r *Runner, p *Prefix, ctxLen int, opts SqueezeOptions) (blobs [][]byte, shapes [][]int, blobDTypes []string, geometry string) {
	t.Helper()
	if err := p.Squeeze(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	blobs, err := p.SqueezeBlobs()
	if err != nil {
		t.Fatal(err)
	}
	shapes, blobDTypes, geometry, err = r.SqueezeLayout(ctxLen, opts)
	if err != nil {
		t.Fatal(err)
	}
	return blobs, shapes, blobDTypes, geometry
}
