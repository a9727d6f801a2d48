package llama

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/weights"
)

// appendPlan feeds a 300-token prompt then two user inputs (100 and 90 tokens) and one decode token,
// returning the logits after each Append. With MaxChunk 128 this walks every step kind: a sequence's
// first prefill chunk (no context yet), a prefill chunk over a context, a dyn chunk with an empty and a
// non-empty dynamic segment, and a decode step.
func appendPlan(t *testing.T, r *Runner) [][]float32 {
	t.Helper()
	ids := func(n, off int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = 100 + ((i+off)*7919)%8000
		}
		return out
	}
	seq := r.NewSequence()
	defer seq.Close()
	var all [][]float32
	for _, in := range [][]int{ids(300, 0), ids(100, 300), ids(90, 400), {42}} {
		logits, err := seq.Append(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, logits)
	}
	return all
}

func maxRelDiff(a, b []float32) (diff float64, top1Same bool) {
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i]-b[i])))
	}
	return diff / maxAbs(a), argmax(a) == argmax(b)
}

// TestStepKindsAgree checks that chunked prefill (first chunk, chunks over a context), dynamic chunks and
// decode give the logits of one unchunked pass, and — where the backend has fused attention (the GPU) —
// that the fused path gives the plain graph's logits.
func TestStepKindsAgree(t *testing.T) {
	want := appendPlan(t, testRunner(t, dtypes.Float32, Options{MaxChunk: 512}))
	got := appendPlan(t, testRunner(t, dtypes.Float32, Options{MaxChunk: 128}))
	for i := range want {
		if d, same := maxRelDiff(want[i], got[i]); d > 1e-4 || !same {
			t.Errorf("float32, append %d: chunked vs unchunked logits differ by %.2g (relative), top-1 same: %v", i, d, same)
		}
	}
	plain := appendPlan(t, testRunner(t, dtypes.BFloat16, Options{MaxChunk: 128, NoFusedAttention: true}))
	fused := appendPlan(t, testRunner(t, dtypes.BFloat16, Options{MaxChunk: 128}))
	for i := range plain {
		d, same := maxRelDiff(plain[i], fused[i])
		t.Logf("bfloat16, append %d: fused vs plain attention: max relative logit difference %.2g, top-1 same: %v", i, d, same)
		if d > 0.03 || !same {
			t.Errorf("bfloat16, append %d: fused vs plain attention logits differ by %.2g (relative), top-1 same: %v", i, d, same)
		}
	}
	// The fused path with the fixed context cut into pieces (ctxPieces; 512-row contexts cut in 4 here;
	// another DynBlock only to get a runner of its own, compiled with the small pieces).
	ctxPieceRows = 128
	split := appendPlan(t, testRunner(t, dtypes.BFloat16, Options{MaxChunk: 128, DynBlock: 64}))
	ctxPieceRows = 2048
	for i := range plain {
		d, same := maxRelDiff(plain[i], split[i])
		t.Logf("bfloat16, append %d: fused attention over a cut context vs plain: max relative logit difference %.2g, top-1 same: %v", i, d, same)
		if d > 0.03 || !same {
			t.Errorf("bfloat16, append %d: fused attention over a cut context vs plain differ by %.2g (relative), top-1 same: %v", i, d, same)
		}
	}
}

// TestRandomWeightsOn checks the on-device random weights: the right shapes, a deterministic seed, the
// intended scale, and a model that runs.
func TestRandomWeightsOn(t *testing.T) {
	cfg := tinyRandomConfig(t)
	b := testBackend(t)
	w, err := RandomWeightsOn(b, cfg, dtypes.Float32, 7)
	if err != nil {
		t.Fatal(err)
	}
	names, dims := cfg.WeightNames()
	var sum, sq float64
	var count int
	for i, tt := range w.Tensors {
		if got := tt.Shape().Dimensions; !slices.Equal(got, dims[i]) {
			t.Fatalf("%s: shape %v, want %v", names[i], got, dims[i])
		}
		v, err := tensors.CopyFlatData[float32](tt)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(names[i], "norm.weight") {
			if v[0] != 1 || v[len(v)-1] != 1 {
				t.Fatalf("%s: norm weights not 1", names[i])
			}
			continue
		}
		for _, x := range v {
			sum += float64(x)
			sq += float64(x) * float64(x)
			count++
		}
	}
	mean, std := sum/float64(count), math.Sqrt(sq/float64(count))
	if math.Abs(mean) > 1e-3 || math.Abs(std-0.02) > 1e-3 {
		t.Errorf("random weights: mean %.4g, std %.4g; want about 0 and 0.02", mean, std)
	}
	again, err := RandomWeightsOn(b, cfg, dtypes.Float32, 7)
	if err != nil {
		t.Fatal(err)
	}
	other, err := RandomWeightsOn(b, cfg, dtypes.Float32, 8)
	if err != nil {
		t.Fatal(err)
	}
	a1, _ := tensors.CopyFlatData[float32](w.Tensors[0])
	a2, _ := tensors.CopyFlatData[float32](again.Tensors[0])
	a3, _ := tensors.CopyFlatData[float32](other.Tensors[0])
	if !slices.Equal(a1, a2) || slices.Equal(a1, a3) {
		t.Error("random weights: the same seed must give the same values and another seed others")
	}
	r, err := NewRunner(b, cfg, w, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	seq := r.NewSequence()
	defer seq.Close()
	logits, err := seq.Append(context.Background(), []int{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range logits {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatal("non-finite logit")
		}
	}
}

// tinyRandomConfig is the bundled model's config shrunk to 2 layers of width 64.
func tinyRandomConfig(t *testing.T) *Config {
	t.Helper()
	hf, err := weights.ReadConfig(bundledModel)
	if err != nil {
		t.Fatal(err)
	}
	hf.HiddenSize, hf.IntermediateSize, hf.NumHiddenLayers = 64, 128, 2
	hf.NumAttentionHeads, hf.NumKeyValueHeads, hf.HeadDim = 2, 1, 32
	cfg, err := NewConfig(hf)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestAppendGreedy checks that the argmax picked on the device is the argmax of the logits Append
// returns, for a prompt and decode steps, on a sequence of its own and on one started from a prefix.
func TestAppendGreedy(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 128})
	ctx := context.Background()
	prompt, p := syntheticPrefix(t, r, 200)
	defer p.Free()
	for name, mk := range map[string]func() *Sequence{"own": r.NewSequence, "prefix": p.NewSequence} {
		a, b := mk(), mk()
		in := prompt
		if name == "prefix" {
			in = []int{5, 6, 7}
		}
		for step := range 6 {
			logits, err := a.Append(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			next, err := b.AppendGreedy(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			if want := argmax(logits); next != want {
				t.Fatalf("%s, step %d: AppendGreedy = %d, argmax of Append's logits = %d", name, step, next, want)
			}
			in = []int{next}
		}
		if a.Len() != b.Len() {
			t.Errorf("%s: lengths %d and %d differ", name, a.Len(), b.Len())
		}
		a.Close()
		b.Close()
	}
}
