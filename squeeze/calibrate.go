package squeeze

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
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

// CalibrateClusters is CalibrateThreshold over clusters, whose keys share one score: scores[i] is the
// calibration score of cluster i and counts[i] its number of keys (0 for an empty cluster, which is
// ignored), taken together over all layers and heads. The threshold is chosen so that the fraction of
// keys dropped (score ≤ τ) is as close to sparsity as whole clusters allow (ties: the one dropping
// fewer keys), so it is a fraction of keys, not of clusters. kept is the fraction of keys kept
// (score > τ); τ = -Inf keeps every key but those of clusters scoring -Inf: clusters a hierarchical
// index did not score (HierarchicalClusterScores), always dropped, as online.
func CalibrateClusters(scores, counts []float32, sparsity float64) (threshold float32, kept float64, err error) {
	if sparsity < 0 || sparsity >= 1 || math.IsNaN(sparsity) {
		return 0, 0, fmt.Errorf("squeeze: sparsity %g outside [0, 1)", sparsity)
	}
	if len(scores) != len(counts) {
		return 0, 0, fmt.Errorf("squeeze: %d cluster scores for %d cluster counts", len(scores), len(counts))
	}
	type cluster struct {
		score float32
		n     float64
	}
	var cs []cluster
	total := 0.0
	for i, s := range scores {
		n := float64(counts[i])
		switch {
		case n < 0 || math.IsNaN(n) || math.IsInf(n, 0):
			return 0, 0, fmt.Errorf("squeeze: cluster %d has a count of %g keys", i, n)
		case n == 0:
			continue
		case math.IsNaN(float64(s)):
			return 0, 0, fmt.Errorf("squeeze: NaN score for cluster %d", i)
		}
		cs = append(cs, cluster{s, n})
		total += n
	}
	if total == 0 {
		return 0, 0, errors.New("squeeze: no keys to calibrate on")
	}
	slices.SortFunc(cs, func(a, b cluster) int { return cmp.Compare(a.score, b.score) }) // no NaN: checked above
	// Candidate thresholds: -Inf (drop nothing but the unscored clusters), then every distinct score
	// (drop it and all below).
	dropped, i := 0.0, 0
	for ; i < len(cs) && math.IsInf(float64(cs[i].score), -1); i++ {
		dropped += cs[i].n
	}
	threshold, bestDropped := float32(math.Inf(-1)), dropped
	bestErr := math.Abs(dropped/total - sparsity)
	for i < len(cs) {
		j := i
		for j < len(cs) && cs[j].score == cs[i].score {
			dropped += cs[j].n
			j++
		}
		if e := math.Abs(dropped/total - sparsity); e < bestErr {
			threshold, bestErr, bestDropped = cs[i].score, e, dropped
		}
		i = j
	}
	return threshold, 1 - bestDropped/total, nil
}

// MassKeptCurve is the attention-mass mode's calibration curve: for every row of scores [R, K] (one
// query's ClusterScores for one head: estimated probabilities, Σ counts × scores = 1) with counts [R, K],
// and every mass target of targets [T] (float32), the number of keys SelectKeysMass keeps for it (the
// clusters in decreasing order of score until their mass reaches the target; all when it is not reached; none for a target ≤ 0):
// [R, T] int32. Ties between clusters are broken by the sort, where SelectKeysMass keeps every tied one.
func MassKeptCurve(scores, counts, targets *Node) *Node {
	g := scores.Graph()
	f32, i32 := dtypes.Float32, dtypes.Int32
	r, k := scores.Shape().Dimensions[0], scores.Shape().Dimensions[1]
	t := targets.Shape().Dimensions[0]
	s := ConvertDType(scores, f32)
	s = Where(GreaterThan(s, ZerosLike(s)), s, ZerosLike(s))
	n := ConvertDType(counts, f32)
	desc := NewClosure(g, func(g *Graph) []*Node {
		lhs := Parameter(g, "lhs_score", shapes.Make(f32))
		rhs := Parameter(g, "rhs_score", shapes.Make(f32))
		for _, name := range []string{"lhs_mass", "rhs_mass", "lhs_count", "rhs_count"} {
			_ = Parameter(g, name, shapes.Make(f32))
		}
		return []*Node{GreaterThan(lhs, rhs)}
	})
	sorted := SortFunc(desc, 1, false, s, Mul(s, n), n)
	cumMass, cumCount := CumSum(sorted[1], 1), CumSum(sorted[2], 1) // [R, K]
	// Clusters needed for target x: those before the first whose cumulative mass reaches x.
	// (A binary search per target: the cumulative masses rise along a row; a cumulative mass equal to the
	// target counts as below it, which only matters for exact ties.)
	x := BroadcastToDims(Reshape(ConvertDType(targets, f32), 1, t), r, t)
	before := searchRight(cumMass, x) // [R, T]
	kept := ConvertDType(takeAlong(cumCount, MinScalar(before, k-1)), i32)
	return Where(GreaterThan(x, ZerosLike(x)), kept, ZerosLike(kept)) // a target ≤ 0 needs no key
}
