package squeeze

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// CalibrateThreshold returns the global threshold τ that drops (score ≤ τ) the given fraction of keys, from
// every key's score (all layers and heads) for the calibration queries — the fixed context's own last
// observation-window queries, as the reference. It also returns the fraction actually kept: keys of one
// cluster share a score, so ties can drop a little more than asked. sparsity 0 keeps everything.
func CalibrateThreshold(scores []float32, sparsity float64) (threshold float32, kept float64, err error) {
	if sparsity < 0 || sparsity >= 1 || math.IsNaN(sparsity) {
		return 0, 0, fmt.Errorf("squeeze: sparsity %g outside [0, 1)", sparsity)
	}
	if len(scores) == 0 {
		return 0, 0, errors.New("squeeze: no scores to calibrate on")
	}
	sorted := slices.Clone(scores)
	for _, s := range sorted {
		if math.IsNaN(float64(s)) {
			return 0, 0, errors.New("squeeze: NaN score in calibration")
		}
	}
	slices.Sort(sorted)
	drop := int(math.Ceil(sparsity * float64(len(sorted))))
	if drop == 0 {
		return float32(math.Inf(-1)), 1, nil
	}
	threshold = sorted[drop-1]
	n := 0
	for _, s := range scores {
		if s > threshold {
			n++
		}
	}
	return threshold, float64(n) / float64(len(scores)), nil
}
