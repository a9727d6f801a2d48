package llama

import (
	"context"
	"math"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/tensors"
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

// TestSqueezedInputBF16: a bfloat16 model's user-input step of many query rows per KV head multiplies the
// centroids in bfloat16 (squeezedAttention), which is exact only because every stored centroid, flat or
// coarse, is a bfloat16 value: checked here bit by bit. With every key kept the step's logits are then the
// dense ones up to bfloat16 rounding, for a flat and a hierarchical index.
func TestSqueezedInputBF16(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[3].IDs[:640]
	const ctxLen = 600 // then a 40-token input: 120 query rows per KV head (squeeze.FusedMinQueries: 64)
	r := testRunner(t, dtypes.BFloat16, Options{})
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
		if err := p.Squeeze(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		for l, c := range p.sq.centroids {
			vals, err := tensors.CopyFlatData[float32](c)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range vals {
				if math.Float32bits(v)&0xffff != 0 {
					t.Fatalf("%+v: layer %d centroid value %d = %g is not a bfloat16 value", opts, l, i, v)
				}
			}
		}
		s := p.NewSequence()
		got, err := s.Append(context.Background(), ids[ctxLen:])
		s.Close()
		p.Free()
		if err != nil {
			t.Fatal(err)
		}
		last := want[len(ids)-1]
		rel := maxDiff(got, last) / maxAbs(last)
		t.Logf("%+v: 40-token input over a squeezed 600-token prefix, last logits relative difference to dense %.2e", opts, rel)
		if rel > 5e-2 || argmax(got) != argmax(last) {
			t.Errorf("%+v: last logits differ from dense by %.2e (relative), top-1 %d against %d", opts, rel, argmax(got), argmax(last))
		}
	}
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
