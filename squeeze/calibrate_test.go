package squeeze

import (
	"math"
	"testing"
)

// TestCalibrateClusters: the threshold is a quantile of keys (clusters weighted by their counts), empty
// clusters and their scores are ignored, and bad input is an error.
func TestCalibrateClusters(t *testing.T) {
	// Scores 1..10 with counts 10..1: 55 keys. Dropping score ≤ 3 drops 10+9+8 = 27 keys (49%).
	var scores, counts []float32
	for i := range 10 {
		scores = append(scores, float32(i+1))
		counts = append(counts, float32(10-i))
	}
	// an empty cluster with the highest score must not count
	scores, counts = append(scores, 100), append(counts, 0)
	tests := []struct {
		sparsity float64
		thr      float32
		kept     float64
	}{
		{0, float32(math.Inf(-1)), 1},
		{0.5, 3, 1 - 27.0/55},
		{0.7, 5, 1 - 40.0/55},            // 40/55 = 72.7%; 34/55 = 61.8%
		{0.9, 7, 1 - 49.0/55},            // 49/55 = 89.1%; 52/55 = 94.5%
		{0.99, 9, 1 - 54.0/55},           // 54/55 = 98.2% is nearer than 55/55
		{0.01, float32(math.Inf(-1)), 1}, // dropping 10 keys (18%) is farther than dropping none
	}
	for _, tc := range tests {
		thr, kept, err := CalibrateClusters(scores, counts, tc.sparsity)
		if err != nil {
			t.Fatal(err)
		}
		if thr != tc.thr || math.Abs(kept-tc.kept) > 1e-12 {
			t.Errorf("sparsity %.2f: threshold %g kept %.4f, want %g %.4f", tc.sparsity, thr, kept, tc.thr, tc.kept)
		}
	}
	// Ties: all keys with one score drop together.
	if thr, kept, _ := CalibrateClusters([]float32{1, 1, 2}, []float32{3, 3, 4}, 0.5); thr != 1 || kept != 0.4 {
		t.Errorf("ties: threshold %g kept %g, want 1 0.4", thr, kept)
	}
	// Unscored clusters (-Inf: pruned by a hierarchical index) are dropped even at τ = -Inf.
	inf := float32(math.Inf(-1))
	for _, tc := range []struct {
		sparsity float64
		thr      float32
		kept     float64
	}{{0.1, inf, 0.5}, {0.5, inf, 0.5}, {0.8, 1, 0.2}} {
		if thr, kept, _ := CalibrateClusters([]float32{inf, 1, 2}, []float32{5, 3, 2}, tc.sparsity); thr != tc.thr || math.Abs(kept-tc.kept) > 1e-12 {
			t.Errorf("unscored clusters, sparsity %.1f: threshold %g kept %g, want %g %g", tc.sparsity, thr, kept, tc.thr, tc.kept)
		}
	}
	for name, bad := range map[string]func() error{
		"NaN score": func() error {
			_, _, err := CalibrateClusters([]float32{float32(math.NaN())}, []float32{1}, 0.5)
			return err
		},
		"negative count": func() error { _, _, err := CalibrateClusters([]float32{1}, []float32{-1}, 0.5); return err },
		"length":         func() error { _, _, err := CalibrateClusters([]float32{1, 2}, []float32{1}, 0.5); return err },
		"no keys":        func() error { _, _, err := CalibrateClusters([]float32{1}, []float32{0}, 0.5); return err },
		"sparsity 1":     func() error { _, _, err := CalibrateClusters([]float32{1}, []float32{1}, 1); return err },
	} {
		if bad() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
