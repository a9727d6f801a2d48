package llama

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"math"
	"os"
	"sync"
	"testing"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/weights"
)

const bundledModel = "../models/tinycode-llama-16m"

type goldenCase struct {
	Prompt     string      `json:"prompt"`
	IDs        []int       `json:"ids"`
	LastLogits []float32   `json:"last_logits"`
	Top5IDs    [][]int     `json:"top5_ids"`
	Top5Logits [][]float32 `json:"top5_logits"`
	GreedyIDs  []int       `json:"greedy_ids"`
	GreedyText string      `json:"greedy_text"`
}

var loadGolden = sync.OnceValues(func() ([]goldenCase, error) {
	f, err := os.Open("testdata/hf_logits.json.gz")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	var g struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.NewDecoder(zr).Decode(&g); err != nil {
		return nil, err
	}
	return g.Cases, nil
})

// testBackend is the pure-Go backend, or the XLA CUDA backend when SQLLM_TEST_BACKEND=xla (the GPU
// script runs this package's compiled tests that way).
func testBackend(t testing.TB) compute.Backend {
	if os.Getenv("SQLLM_TEST_BACKEND") != "xla" {
		return goBackend(t)
	}
	xlaOnce.Do(func() { xlaBackend, xlaErr = xla.New(xla.Options{Kind: xla.XLA}) })
	if xlaErr != nil {
		t.Fatal(xlaErr)
	}
	return xlaBackend.Backend
}

var goOnce = sync.OnceValues(xla.NewGo)

func goBackend(t testing.TB) compute.Backend {
	b, err := goOnce()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	xlaOnce    sync.Once
	xlaBackend *xla.Backend
	xlaErr     error
)

var runners sync.Map // dtype+opts → *Runner

func testRunner(t testing.TB, dtype dtypes.DType, opts Options) *Runner {
	t.Helper()
	key := struct {
		d dtypes.DType
		o Options
	}{dtype, opts}
	if r, ok := runners.Load(key); ok {
		return r.(*Runner)
	}
	hf, err := weights.ReadConfig(bundledModel)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := NewConfig(hf)
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := weights.OpenDir(bundledModel)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	w, err := LoadWeights(cfg, ckpt, dtype)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRunner(testBackend(t), cfg, w, opts)
	if err != nil {
		t.Fatal(err)
	}
	runners.Store(key, r)
	return r
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func maxAbs(v []float32) float64 {
	m := 0.0
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}

// TestGoldenFloat32 checks float32 logits and greedy tokens against transformers on all four prompts.
func TestGoldenFloat32(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	r := testRunner(t, dtypes.Float32, Options{})
	for ci, gc := range cases {
		t.Run(string(rune('a'+ci)), func(t *testing.T) {
			seq := r.NewSequence()
			defer seq.Close()
			all, err := seq.AppendAllLogits(context.Background(), gc.IDs)
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != len(gc.IDs) {
				t.Fatalf("got %d logit rows, want %d", len(all), len(gc.IDs))
			}
			last := all[len(all)-1]
			scale := maxAbs(gc.LastLogits)
			worst := 0.0
			for i, want := range gc.LastLogits {
				worst = math.Max(worst, math.Abs(float64(last[i]-want)))
			}
			// Every position: the reference's top-5 logits.
			worstTop := 0.0
			for p, ids := range gc.Top5IDs {
				for j, id := range ids {
					worstTop = math.Max(worstTop, math.Abs(float64(all[p][id]-gc.Top5Logits[p][j]))/maxAbs(gc.Top5Logits[p]))
				}
			}
			t.Logf("%d tokens: last-position max |Δlogit| = %.2e (relative %.2e); top-5 at every position: relative %.2e",
				len(gc.IDs), worst, worst/scale, worstTop)
			if worst/scale > 1e-3 || worstTop > 1e-3 {
				t.Errorf("logits differ from transformers: relative %.2e (last), %.2e (top-5), want <= 1e-3", worst/scale, worstTop)
			}
			// Greedy continuation.
			var got []int
			tok := argmax(last)
			for len(got) < len(gc.GreedyIDs) {
				got = append(got, tok)
				if len(got) == len(gc.GreedyIDs) {
					break
				}
				logits, err := seq.Append(context.Background(), []int{tok})
				if err != nil {
					t.Fatal(err)
				}
				tok = argmax(logits)
			}
			for i := range gc.GreedyIDs {
				if got[i] != gc.GreedyIDs[i] {
					t.Fatalf("greedy token %d: got %d, want %d (got %v)", i, got[i], gc.GreedyIDs[i], got)
				}
			}
		})
	}
}
