package llama

import (
	"context"
	"math"
	"testing"

	"github.com/gomlx/compute/dtypes"
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
