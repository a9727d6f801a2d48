package llama

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/dtypes/bfloat16"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// TestSqueezedPrefix: with every key kept (budget 1), a squeezed prefix gives the dense logits; with a
// 30% budget (each decode step selecting with its own query) the logits stay finite and mostly agree on
// the top token.
func TestSqueezedPrefix(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:1400] // a 2,100-token Python file, cut
	r := testRunner(t, dtypes.Float32, Options{})
	ctxLen := 1300
	seq := r.NewSequence()
	want, err := seq.AppendAllLogits(context.Background(), ids)
	seq.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, budget := range []float64{1, 0.3} {
		p, err := r.Prefill(context.Background(), ids[:ctxLen])
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Squeeze(context.Background(), SqueezeOptions{Budget: budget}); err != nil {
			t.Fatal(err)
		}
		info, _ := p.SqueezeInfo()
		// Teacher-forced decode: every step selects keys with its own token's queries.
		got := decodeLogits(t, p, ids[ctxLen:])
		p.Free()
		worst, agree := 0.0, 0
		for i, row := range got {
			worst = math.Max(worst, maxDiff(row, want[ctxLen+i])/maxAbs(want[ctxLen+i]))
			if argmax(row) == argmax(want[ctxLen+i]) {
				agree++
			}
		}
		t.Logf("budget %.1f: %d clustered keys, %d centroids, window %d, kept fraction %.3f (clustering %v); "+
			"relative logit error %.2e, top-1 agrees at %d/%d positions",
			budget, info.Clustered, info.Centroids, info.Window, info.KeptFraction, info.ClusterTime, worst, agree, len(got))
		if budget == 1 && worst > 1e-4 {
			t.Errorf("every key kept: logits differ from dense by %.2e (relative)", worst)
		}
		if agree < len(got)*7/10 {
			t.Errorf("budget %.1f: top-1 agrees at only %d/%d positions", budget, agree, len(got))
		}
	}
}

// TestSqueezeKept: the steps' kept keys are measured. In the fixed-budget mode every step keeps exactly the
// budget, so the measured fraction is SqueezeInfo's; in the calibrated mode it varies with the queries and
// stays between the window alone and every key; a dense sequence measures nothing.
func TestSqueezeKept(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:1320]
	ctxLen := 1300
	r := testRunner(t, dtypes.Float32, Options{})
	p, err := r.Prefill(context.Background(), ids[:ctxLen])
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	measure := func(tokens []int) (float64, int) {
		s := p.NewSequence()
		defer s.Close()
		if _, err := s.Append(context.Background(), tokens[:8]); err != nil { // the pending token and 8 more: one step
			t.Fatal(err)
		}
		for _, tok := range tokens[8:] {
			if _, err := s.Append(context.Background(), []int{tok}); err != nil {
				t.Fatal(err)
			}
		}
		kept, steps, err := s.SqueezeKept()
		if err != nil {
			t.Fatal(err)
		}
		return kept, steps
	}
	if kept, steps := measure(ids[ctxLen:]); steps != 0 || kept != 0 {
		t.Errorf("dense: measured %g over %d steps", kept, steps)
	}
	for _, opts := range []SqueezeOptions{{Budget: 0.3}, {Sparsity: 0.7}} {
		if err := p.Squeeze(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		info, _ := p.SqueezeInfo()
		kept, steps := measure(ids[ctxLen:])
		windowOnly := p.sq.readFraction(0)
		t.Logf("%v: measured %.4f over %d steps; SqueezeInfo %.4f; window and centroids alone %.4f", opts, kept, steps, info.KeptFraction, windowOnly)
		if steps != 1+len(ids)-ctxLen-8 {
			t.Errorf("%v: %d steps measured, want %d", opts, steps, 1+len(ids)-ctxLen-8)
		}
		if opts.Budget > 0 && math.Abs(kept-info.KeptFraction) > 1e-12 {
			t.Errorf("fixed budget: measured %.6f, want exactly %.6f", kept, info.KeptFraction)
		}
		if !(kept > windowOnly && kept < p.sq.readFraction(float64(p.sq.clustered))) {
			t.Errorf("%v: measured %.4f outside (%.4f, %.4f)", opts, kept, windowOnly, p.sq.readFraction(float64(p.sq.clustered)))
		}
	}
}

// TestSqueezedInputBF16: a bfloat16 model's index keeps its centroids, flat or coarse, as bfloat16 tensors
// (centroidDType), holding exactly the bfloat16 values the float32 clustering rounds to (checked bit by bit
// against it), so every step multiplies them with the queries in bfloat16 (squeezedAttention). With every
// key kept the logits of a user input's step of many query rows per KV head and of decode steps are then
// the dense ones (the decode steps': those over the dense prefix) up to bfloat16 rounding, for a flat and a
// hierarchical index. A stored index (calibrated,
// flat and hierarchical, with the remainder, and the attention-mass mode) loads back as bfloat16 tensors
// of the same bits, stores back to the same blobs and decodes to the same logits.
func TestSqueezedInputBF16(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:640]
	const ctxLen = 600 // then a 40-token input: 120 query rows per KV head (squeeze.FusedMinQueries: 64)
	r := testRunner(t, dtypes.BFloat16, Options{})
	if r.centroidDType() != dtypes.BFloat16 {
		t.Fatalf("a bfloat16 runner's centroid dtype is %s", r.centroidDType())
	}
	dense := r.NewSequence()
	want, err := dense.AppendAllLogits(context.Background(), ids)
	dense.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []SqueezeOptions{{Budget: 1}, {Budget: 1, Hierarchical: true, CoarseKeep: 1}} {
		p, err := r.Prefill(context.Background(), ids[:ctxLen])
		if err != nil {
			t.Fatal(err)
		}
		denseSteps := decodeLogits(t, p, ids[ctxLen:ctxLen+4]) // decode steps over the dense prefix
		if err := p.Squeeze(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		got := bf16CentroidBits(t, p.sq)
		for l, ref := range clusteredCentroidsF32(t, p) {
			if len(ref) != len(got[l]) {
				t.Fatalf("%+v: layer %d has %d centroid values, the float32 clustering %d", opts, l, len(got[l]), len(ref))
			}
			for i, v := range ref {
				if b := math.Float32bits(v); b&0xffff != 0 || uint16(b>>16) != got[l][i] {
					t.Fatalf("%+v: layer %d centroid value %d is %#04x, the float32 clustering's %g (%#08x)", opts, l, i, got[l][i], v, b)
				}
			}
		}
		s := p.NewSequence()
		last, err := s.Append(context.Background(), ids[ctxLen:])
		s.Close()
		if err != nil {
			p.Free()
			t.Fatal(err)
		}
		steps := decodeLogits(t, p, ids[ctxLen:ctxLen+4]) // decode steps: a few query rows per KV head each
		p.Free()
		// The top-1 token must agree; for a decode step, or be within the tolerance of a tie in the dense
		// logits (the fourth step's two best are one bfloat16 step apart, 9.875 and 9.9375, and swap, with
		// float32 centroids as with bfloat16 ones: every key is kept, so the centroids do not change the logits).
		check := func(what string, got, want []float32, ties bool) {
			scale := maxAbs(want)
			rel := maxDiff(got, want) / scale
			t.Logf("%+v: %s, logits relative difference to dense %.2e", opts, what, rel)
			top := argmax(got) == argmax(want) || (ties && float64(want[argmax(want)]-want[argmax(got)])/scale <= 5e-2)
			if rel > 5e-2 || !top {
				t.Errorf("%+v: %s: logits differ from dense by %.2e (relative), top-1 %d against %d", opts, what, rel, argmax(got), argmax(want))
			}
		}
		check("40-token input over a squeezed 600-token prefix, last", last, want[len(ids)-1], false)
		for i, row := range steps {
			check(fmt.Sprintf("decode step %d (against the dense prefix's)", i), row, denseSteps[i], true)
		}
	}
	for _, opts := range []SqueezeOptions{{Sparsity: 0.5, Remainder: true}, {Sparsity: 0.5, Hierarchical: true, Remainder: true},
		{Sparsity: 0.5, Mass: true}} {
		p, err := r.Prefill(context.Background(), ids[:ctxLen])
		if err != nil {
			t.Fatal(err)
		}
		blobs, _, _, _ := squeezeAndLayout(t, r, p, ctxLen, opts)
		q := reloadedPrefix(t, r, p, ids[:ctxLen], opts, blobs)
		a, b := bf16CentroidBits(t, p.sq), bf16CentroidBits(t, q.sq)
		for l := range a {
			if !slices.Equal(a[l], b[l]) {
				t.Errorf("%+v: layer %d centroids differ after a save/load round trip", opts, l)
			}
		}
		checkLoadedIndex(t, p, q, blobs, ids[ctxLen:ctxLen+3])
		q.Free()
		p.Free()
	}
}

// TestSqueezedInputFreshRows: a user input's first step over a squeezed prefix (a fresh dynamic segment) lays a
// grouped-query model's query rows out head by head (squeezedAttention), so that the fused causal call over the
// input's own tokens needs no transposes. Every input row's logits must equal those of the step that treats the
// segment as any other (token-major rows, the masked dense graph; testFreshDyn -1), with keys dropped so that the
// selection matters. In float32 (no fused attention) the fresh branch runs its fallback, the masked dense graph with
// the mask laid out head by head (forced on where the backend has no fused attention: testFreshDyn 1), in the
// fixed-budget, calibrated, hierarchical, remainder and attention-mass modes: equal within 1e-5. In bfloat16 on a backend with fused attention
// (SQLLM_TEST_BACKEND=xla on a GPU) it runs the fused causal call: within bfloat16's rounding of the other graph.
func TestSqueezedInputFreshRows(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:640]
	const ctxLen = 600 // then a 40-token input
	ctx := context.Background()
	for _, tc := range []struct {
		dtype dtypes.DType
		opts  []SqueezeOptions
		tol   float64
	}{
		{dtypes.Float32, []SqueezeOptions{{Budget: 0.3}, {Sparsity: 0.7}, {Budget: 0.3, Hierarchical: true}, {Sparsity: 0.5, Remainder: true}, {Sparsity: 0.5, Mass: true}}, 1e-5},
		{dtypes.BFloat16, []SqueezeOptions{{Budget: 0.3}}, 5e-2},
	} {
		r := testRunner(t, tc.dtype, Options{})
		if g := r.cfg.GroupSize(); g < 2 || (len(ids)-ctxLen)*g < squeeze.FusedMinQueries {
			t.Fatalf("the bundled model's %d query heads a KV head give %d rows: not a grouped-query fresh-segment step", g, (len(ids)-ctxLen)*g)
		}
		run := func(p *Prefix, fresh int) [][]float32 {
			testFreshDyn = fresh
			defer func() { testFreshDyn = 0 }()
			s := p.NewSequence()
			defer s.Close()
			got, err := s.AppendAllLogits(ctx, ids[ctxLen:])
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		for _, opts := range tc.opts {
			p, err := r.Prefill(ctx, ids[:ctxLen])
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Squeeze(ctx, opts); err != nil {
				p.Free()
				t.Fatal(err)
			}
			want, got := run(p, -1), run(p, 1)
			p.Free()
			if len(got) != len(want) {
				t.Fatalf("%s %+v: %d rows of logits, want %d", tc.dtype, opts, len(got), len(want))
			}
			worst := 0.0
			for i := range got {
				worst = math.Max(worst, maxDiff(got[i], want[i])/maxAbs(want[i]))
			}
			t.Logf("%s %+v: %d input rows, the fresh segment's head-major step against the token-major one: relative logit difference %.2e",
				tc.dtype, opts, len(got), worst)
			if worst > tc.tol {
				t.Errorf("%s %+v: the fresh segment's step gives logits %.2e (relative) from the token-major step's", tc.dtype, opts, worst)
			}
		}
	}
}

// TestKernelProbes: on the XLA backend of a GPU (SQLLM_TEST_BACKEND=xla) every embedded Triton kernel's probe
// compiles, runs and agrees with its graph reference, so that the engine's default (SelectAuto) takes the kernels;
// a failing probe makes the engine fall back to XLA's graphs without failing any other test. On the pure-Go
// backend, which has no custom calls, every probe says no at once.
func TestKernelProbes(t *testing.T) {
	b := testBackend(t)
	want := os.Getenv("SQLLM_TEST_BACKEND") == "xla"
	for _, p := range []struct {
		name  string
		probe func(compute.Backend) bool
	}{{"paged", squeeze.ProbePaged}, {"paged with the dynamic segment", squeeze.ProbePagedSeg}, {"lookup", squeeze.ProbeLookup},
		{"cluster scores", squeeze.ProbeScores}, {"selection", squeeze.ProbeSelect}} {
		if got := p.probe(b); got != want {
			t.Errorf("the %s kernels' probe says %v on %s, want %v", p.name, got, b.Name(), want)
		}
	}
}

// bf16CentroidBits returns the bit patterns of an index's centroid tensors, failing the test unless they are
// bfloat16 tensors.
func bf16CentroidBits(t *testing.T, sq *squeezeIndex) [][]uint16 {
	t.Helper()
	var out [][]uint16
	for l, c := range sq.centroids {
		if c.DType() != dtypes.BFloat16 {
			t.Fatalf("layer %d centroids are %s, want bfloat16", l, c.DType())
		}
		x, err := tensors.CopyFlatData[bfloat16.BFloat16](c)
		if err != nil {
			t.Fatal(err)
		}
		bits := make([]uint16, len(x))
		for i, v := range x {
			bits[i] = v.Bits()
		}
		out = append(out, bits)
	}
	return out
}

// clusteredCentroidsF32 clusters p's keys as p's index was (its options and geometry) and returns every
// layer's centroids, packed as the index packs them, rounded to bfloat16 values (roundBF16) but kept float32:
// what the index held before it kept a bfloat16 model's centroids in bfloat16.
func clusteredCentroidsF32(t *testing.T, p *Prefix) [][]float32 {
	t.Helper()
	sq := p.sq
	e, err := graph.NewExec(p.r.backend, func(keys, clustered *graph.Node) *graph.Node {
		if sq.k1 == 0 {
			c, _, _ := squeeze.KMeansMasked(keys, clustered, sq.k, sq.opts.Iterations)
			return roundBF16(c)
		}
		hi := squeeze.KMeansHierarchical(keys, clustered, sq.k, sq.k1, sq.opts.Iterations)
		return graph.Concatenate([]*graph.Node{roundBF16(hi.Centroids), roundBF16(hi.CoarseCentroids)}, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Finalize()
	var out [][]float32
	for l := range p.kv.k {
		res, err := e.Call(p.kv.k[l], int32(sq.clustered))
		if err != nil {
			t.Fatal(err)
		}
		if res[0].DType() != dtypes.Float32 {
			t.Fatalf("the reference clustering gives %s centroids", res[0].DType())
		}
		x, err := tensors.CopyFlatData[float32](res[0])
		res[0].FinalizeAll()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

// TestEnvChoice: an environment switch takes the values it knows, and an unknown one falls back to the default.
func TestEnvChoice(t *testing.T) {
	choices := map[string]int{"": 0, "a": 1, "b": 2}
	for _, c := range []struct {
		v    string
		want int
	}{{"", 0}, {"a", 1}, {"b", 2}, {"yes", 0}} {
		t.Setenv("SQLLM_TEST_CHOICE", c.v)
		if got := envChoice("SQLLM_TEST_CHOICE", choices); got != c.want {
			t.Errorf("SQLLM_TEST_CHOICE=%q: %d, want %d", c.v, got, c.want)
		}
	}
}

// TestEnvInt: a positive integer is taken, anything else (unset, 0, negative, not a number) gives the default.
func TestEnvInt(t *testing.T) {
	for _, c := range []struct {
		v    string
		want int
	}{{"", 128}, {"512", 512}, {"1", 1}, {"0", 128}, {"-4", 128}, {"12x", 128}} {
		t.Setenv("SQLLM_TEST_INT", c.v)
		if got := envInt("SQLLM_TEST_INT", 128); got != c.want {
			t.Errorf("SQLLM_TEST_INT=%q: %d, want %d", c.v, got, c.want)
		}
	}
}

// TestParseSplits: SQLLM_SCORES_SPLITS is two integers ≥ 0, "ks,ms".
func TestParseSplits(t *testing.T) {
	for v, want := range map[string][2]int{"1,2": {1, 2}, "0,6": {0, 6}, " 3 , 0 ": {3, 0}} {
		if got, ok := parseSplits(v); !ok || got != want {
			t.Errorf("parseSplits(%q) = %v, %v; want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "3", "1,", "a,1", "-1,2", "1,2,3"} {
		if got, ok := parseSplits(v); ok {
			t.Errorf("parseSplits(%q) = %v, accepted", v, got)
		}
	}
}

// TestEnvDir: a directory is taken; unset, a missing path or a file gives "".
func TestEnvDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f.cfg")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]string{"": "", dir: dir, file: "", filepath.Join(dir, "missing"): ""} {
		t.Setenv("SQLLM_TEST_DIR", v)
		if got := envDir("SQLLM_TEST_DIR"); got != want {
			t.Errorf("SQLLM_TEST_DIR=%q: %q, want %q", v, got, want)
		}
	}
}
