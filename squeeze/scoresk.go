package squeeze

import (
	"fmt"
	"math"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// The cluster-score kernels: on a GPU, a user input's cluster scores (ClusterScores: each cluster's estimated
// attention probability, averaged over the input's query rows) run as two Triton kernels that never write the
// [H, M, K] logits. XLA writes them in float32 and reads them back three times (maximum, sum, the mean of the
// exponentials): at the LLaMA-2-7B shape with a 128K context and a 512-token input that is 430 MB a layer for
// each pass, and 590 µs of the input step's 972 µs a layer of squeezed attention (H200, session 11).
//
//   - Kernel Z, one program per (KV head, 64 query rows, centroid split): a tensor-core product of the rows with
//     each block of 128 centroids of its share, and the rows' running maximum and sum of N_c·exp(logit) (online
//     log-sum-exp). Operands q [H·M, D], centroids [H·K, D] bfloat16, counts [H·K] float32, prm [M, K, nMB, nKB,
//     MS, Mp, nKB, KS] int32 (Z reads its blocks from slot 6, P from slot 3), scale [1] float32; outputs mx, sm
//     [H·nMB·KS·64] float32.
//   - Kernel P, one program per (KV head, 128 centroids, query split): for each block of 64 rows of its share,
//     the rows' logZ from their KS partials, the logits again, exp(logit − logZ) added element-wise into a
//     [64, 128] accumulator, summed over the rows at the end. Operands q, centroids, mx, sm, prm, scale; output
//     [H·nKB·MS·128] float32, the MS splits' partial sums, which XLA adds and divides by M. Since session 19 it
//     runs only under ScoresPByBlocks (for measurements); the second kernel is kernel P by row blocks (below),
//     the same sums from Z's launch.
//
// Both read rows through clamped index vectors, take every size at run time, and serve any input length and
// context (round 12's Triton IR differs between shapes only in multiplications of a constant by 0, checked in
// round 11; round 15's base-2 IR also differs between shapes and was not diffed). Written in Pallas (scripts/gpu/pallas_scores.py), exported like the paged kernels
// (kernels/scores_{z,p}_d{D}.cfg.gz, D = 64 and 128, 64-row and 128-centroid blocks, 4 warps, 3 stages: the best
// pair of round 12, which timed each kernel alone over 15 block, warp and stage choices). Since session 12 both
// compute in base 2 (round 15, the same contract): the logits scaled by scale·log2 e in the product's one
// multiply, the counts' bias log2 N, ex2 instead of exp (one multiply fewer an element), Z's maximum converted back
// to natural units at the end, and P's padding rows given log2 Z = +Inf instead of a select an element: 1.10–1.14×
// faster than round 12's in the same run (LLaMA-3-8B 128K, 512-token input: 265.2 against 302.9 µs a layer).
// Checked there against the XLA formulation (relative 7e-7 at most, empty clusters and ragged sizes included). Measured there (H200,
// session 11, 16 or 8 layers chained, µs a layer, against XLA's graph in the same run): LLaMA-2-7B shape,
// 512-token input, 105 against 186 at 32K and 297 against 593 at 128K; LLaMA-3-8B (2,048 query rows a KV head)
// 109 against 176 and 298 against 584. Each kernel alone takes about 155 µs at 128K, for 27.5 GFLOP and 107M
// exponentials: the exponential rate of a flash-attention forward in Triton, so the two passes (each about 5% of
// dense attention's exponentials) cost about what the kept keys' attention costs. In the attention benchmark
// (session 11, call 5) a 512-token input's squeezed attention took 245.6 against 333.2 µs a layer at 7B 32K and
// 690.9 against 968.4 at 128K. For a decode step's few rows XLA was as fast or faster (the kernels pad the rows
// to 16), so the kernels serve steps of at least ScoresMinQueries rows a KV head.

// Blocks of the embedded kernels (BM query rows, BK centroids).
const (
	scoresBM = 64
	scoresBK = 128
	// scoresTarget is the number of programs kernel P's splits aim at (4 per SM of an H100 / H200: better than 8
	// at three of the four shapes in round 11).
	scoresTarget = 528
	// scoresZWave is the number of kernel Z's programs resident at once on an H100 / H200 (2 an SM: 115 KB of
	// shared memory each, Nsight Compute in session 13): Z takes the most centroid splits that keep its programs
	// within one such wave (at least one split). Session 17 (H200, CUPTI, 512-token input): one split instead of
	// the three that 528 programs gave cut Z from 35.7 to 26.6 µs a layer at LLaMA-2-7B 32K, 103.6 to 94.9 at 128K,
	// 41.9 to 26.1 at LLaMA-3-8B 32K and 109.0 to 94.5 at 128K (256 programs, one wave, each walking all of its
	// head's centroid blocks), and kernel P after it ran faster too (117.8 to 104.5 at 7B 128K).
	scoresZWave = 264
)

// ScoresMinQueries is the fewest query rows per KV head for which the cluster scores run in the kernels.
const ScoresMinQueries = 64

// ScoresKernels is when a step's cluster scores run in the kernels (SelectMode's values: SelectAuto on a
// backend that passed ProbeScores, SelectOff never, SelectOn wherever there is a kernel); the engine sets it
// from SQLLM_SQUEEZE_SCORES (1: SelectOn, 0: SelectOff, unset: SelectAuto). LayerIndex.Scores overrides it
// per graph.
var ScoresKernels SelectMode

// scoresProbed holds ProbeScores' result per backend (compute.Backend → bool).
var scoresProbed sync.Map

// scoresCall emits a cluster-score kernel's call; tests replace it with a graph emulation (emulateScores).
var scoresCall = tritonLaunch

// Kernel P by row blocks (kernels/scores_pr_d{D}.cfg.gz; Pallas round 31, make_scores_pr2 in
// scripts/gpu/pallas_scores.py), the second kernel since session 18: Z's launch, splits included (one program per
// KV head, 64 query rows and centroid split, H·nMB·KS programs). Each program takes its rows' log Z from all KS of
// Z's partials once, then walks its split's share of the head's centroid blocks as Z does. A block's logits are
// computed transposed ([128 centroids, 64 rows]), so a centroid's sum over the rows is a reduction within a row of
// the product's layout, and the program writes the block's 128 sums of exp(logit − log Z); output [H·nMB·Kp]
// float32 (Kp = nKB·128; the KS programs of a row block write disjoint blocks of it), which XLA sums over the nMB
// row blocks. The same operands and prm as kernel P. Kernel P proper walks the row blocks for one block of
// centroids (H·nKB·MS programs, several waves of short loops).
//
// Measured in Pallas (jax timings of 16 or 8 chained layers, µs a layer, the same run, after the same Z):
//   - Session 18 (call 3, an NVIDIA H100 80GB; round 28's kernel, one program per row block, then the second
//     kernel only where Z ran one split): Z and P 73.5 against Z and P by row blocks 60.8 at LLaMA-2-7B 32K
//     (512-token input), 235.9 against 204.5 at 7B 128K, 77.0 against 67.2 at LLaMA-3-8B 32K, 232.4 against 194.6
//     at 8B 128K; P alone 51.7 against 33.2 and 134.0 against 98.7 at 7B 32K and 128K. 4 warps and 3 stages were
//     the best of four choices.
//   - Session 19 (call 1, an NVIDIA H100 80GB; round 31): with Z's splits, for a 64-token input (where Z splits
//     the centroids), Z and P by centroid blocks / Z and P by row blocks without splits (round 28) / with Z's
//     splits: 34.2 / 41.5 / 32.0 at 7B 32K, 82.7 / 103.2 / 71.4 at 7B 128K, 32.3 / 36.1 / 25.4 at 8B 32K, 60.6 /
//     101.3 / 43.8 at 8B 128K; for 512 tokens (one split, the same kernel as round 28's) 68.7 / 64.4, 209.9 /
//     205.2, 64.5 / 65.6, 192.6 / 192.3 for the last two.
// Checked there against XLA's scores (relative 8.9e-7, empty clusters, ragged sizes, Z splits).

// ScoresPByBlocks makes a user input's cluster scores always run kernel P proper (by centroid blocks) after Z; the
// engine sets it from SQLLM_SCORES_P=blocks, for measurements.
var ScoresPByBlocks bool

// scoresConfigs are the embedded configs of kernel Z, kernel P (by centroid blocks) and kernel P by row blocks for
// head dim d ("" where there are none).
func scoresConfigs(d int) (z, p, pr string) {
	if d != 64 && d != 128 {
		return "", "", ""
	}
	return scoresConfig("z", d), scoresConfig("p", d), scoresConfig("pr", d)
}

// scoresConfig is the config of cluster-score kernel kind ("z", "p" or "pr") for head dim d ("" where there is none).
func scoresConfig(kind string, d int) string {
	return kernelConfig(fmt.Sprintf("kernels/scores_%s_d%d.cfg.gz", kind, d))
}

// useScoresKernels says whether a step graph scores the clusters of centroids [H, K, D] for queries q [H, M, D]
// in the kernels: both bfloat16, M ≥ ScoresMinQueries, a head dim with a kernel, a backend with custom calls,
// and the mode (SelectAuto: ScoresKernels; under SelectAuto the backend must have passed ProbeScores already).
func useScoresKernels(q, centroids *Node, mode SelectMode) bool {
	bf16 := dtypes.BFloat16
	if q.DType() != bf16 || centroids.DType() != bf16 || q.Shape().Dimensions[1] < ScoresMinQueries ||
		!kernelsWanted(q.Graph(), mode, ScoresKernels, &scoresProbed) {
		return false
	}
	z, p, pr := scoresConfigs(q.Shape().Dimensions[2])
	return z != "" && p != "" && pr != ""
}

// ScoresFor says whether steps on backend b with head dim d, in a model of the given dtype, score clusters in
// the kernels for inputs of at least ScoresMinQueries rows a KV head (under SelectAuto it runs ProbeScores
// once).
func ScoresFor(b compute.Backend, d int, dtype dtypes.DType) bool {
	z, p, pr := scoresConfigs(d)
	return dtype == dtypes.BFloat16 && z != "" && p != "" && pr != "" && kernelsFor(b, ScoresKernels, ProbeScores)
}

// scoresSplits are the kernels' launch for h heads, nmb row blocks and nkb centroid blocks: ks centroid splits
// of kernel Z, as many as keep its programs within scoresZWave (at least 1), and ms row splits of kernel P, for
// about scoresTarget programs. ScoresSplitsOverride, where positive, replaces the computed ks (index 0) or ms
// (index 1), clamped to the blocks (SQLLM_SCORES_SPLITS="ks,ms" in the engine; for measurements).
func scoresSplits(h, nmb, nkb int) (ks, ms int) {
	ks = max(1, min(nkb, scoresZWave/(h*nmb)))
	ms = max(1, min(nmb, (scoresTarget+h*nkb-1)/(h*nkb)))
	if o := ScoresSplitsOverride[0]; o > 0 {
		ks = min(nkb, o)
	}
	if o := ScoresSplitsOverride[1]; o > 0 {
		ms = min(nmb, o)
	}
	return ks, ms
}

// ScoresSplitsOverride: see scoresSplits.
var ScoresSplitsOverride [2]int

// scoresKernel is ClusterScores through the kernels (useScoresKernels): queries q [H, M, D] and centroids
// [H, K, D] bfloat16, counts [H, K] float32 → [H, K] float32.
func scoresKernel(q, centroids, counts *Node, scale float64) *Node {
	g := q.Graph()
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	k := centroids.Shape().Dimensions[1]
	zc, pc, prc := scoresConfigs(d)
	nmb, nkb := (m+scoresBM-1)/scoresBM, (k+scoresBK-1)/scoresBK
	ks, ms := scoresSplits(h, nmb, nkb)
	f32 := dtypes.Float32
	// prm [M, K, nMB, nKB (P's blocks), MS, Mp, nKB (Z's blocks: the same BK), KS]
	prm := Const(g, []int32{int32(m), int32(k), int32(nmb), int32(nkb), int32(ms), int32(nmb * scoresBM), int32(nkb), int32(ks)})
	sc := Const(g, []float32{float32(scale)})
	qf, cf := Reshape(q, h*m, d), Reshape(centroids, h*k, d)
	cnt := Reshape(ConvertDType(counts, f32), h*k)
	zProgs := h * nmb * ks
	part := shapes.Make(f32, zProgs*scoresBM)
	z := scoresCall(zc, zProgs, []*Node{qf, cf, cnt, prm, sc}, []shapes.Shape{part, part})
	var s *Node // [H, Kp]
	if ScoresPByBlocks {
		pProgs := h * nkb * ms
		sums := scoresCall(pc, pProgs, []*Node{qf, cf, z[0], z[1], prm, sc}, []shapes.Shape{shapes.Make(f32, pProgs*scoresBK)})[0]
		s = Reshape(ReduceSum(Reshape(sums, h, nkb, ms, scoresBK), 2), h, nkb*scoresBK)
	} else { // P by row blocks over Z's programs
		kp := nkb * scoresBK
		sums := scoresCall(prc, zProgs, []*Node{qf, cf, z[0], z[1], prm, sc}, []shapes.Shape{shapes.Make(f32, h*nmb*kp)})[0]
		s = ReduceSum(Reshape(sums, h, nmb, kp), 1)
	}
	s = DivScalar(Slice(s, AxisRange(), AxisRange(0, k)), float64(m))
	return Where(GreaterThan(counts, ZerosLike(counts)), s, ZerosLike(s))
}

// clusterScores is ClusterScores, in the kernels where useScoresKernels says so (mode: LayerIndex.Scores).
func clusterScores(q, centroids, counts *Node, scale float64, mode SelectMode) *Node {
	if useScoresKernels(q, centroids, mode) {
		return scoresKernel(q, centroids, counts, scale)
	}
	return ClusterScores(q, centroids, counts, scale)
}

// ProbeScores compiles and runs small cases through the cluster-score kernels on b, once per backend, and says
// whether they ran and agreed with ClusterScores (relative 1e-4 of the largest score; empty clusters, ragged
// sizes included; kernel P by row blocks at both head dims, with and without Z's centroid splits, a program walking
// one or two centroid blocks; kernel P by centroid blocks under ScoresPByBlocks). A plugin that cannot read the embedded bytecode fails here, so
// SelectAuto falls back to XLA's scores. On a backend without custom calls it is false at once.
func ProbeScores(b compute.Backend) bool { return probeOnce(&scoresProbed, b, probeScores) }

func probeScores(b compute.Backend) (ok bool) {
	worst := math.Inf(1)
	err := exceptions.TryCatch[error](func() {
		out := MustExecOnceN(b, func(g *Graph) []*Node {
			if !pagedAvailable(g) {
				return []*Node{Const(g, float32(math.Inf(1)))}
			}
			rels := Scalar(g, dtypes.Float32, 0)
			for _, c := range []struct{ h, m, k, d int }{{3, 70, 50, 128}, {2, 200, 1100, 128}, {4, 100, 333, 64}, {4, 100, 100, 64}, {133, 64, 129, 128}} {
				q, cent, counts := probeScoresInputs(g, c.h, c.m, c.k, c.d)
				scale := Scale(c.d)
				want := ClusterScores(q, cent, counts, scale)
				got := scoresKernel(q, cent, counts, scale)
				rel := Div(ReduceAllMax(Abs(Sub(got, want))), ReduceAllMax(want))
				rels = Max(rels, Where(IsFinite(rel), rel, Scalar(g, dtypes.Float32, float32(math.Inf(1)))))
			}
			return []*Node{rels}
		})
		worst = float64(out[0].Value().(float32))
	})
	return err == nil && worst <= 1e-4
}

// probeScoresInputs are a probe case's queries [h, m, d] and centroids [h, k, d] (bfloat16 values of a fixed
// pattern, logits up to about ±10) and counts [h, k] (every 7th cluster empty).
func probeScoresInputs(g *Graph, h, m, k, d int) (q, cent, counts *Node) {
	f32 := dtypes.Float32
	wave := func(rows int, a, b float64) *Node {
		i := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 1), f32)
		j := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 2), f32)
		hh := ConvertDType(Iota(g, shapes.Make(dtypes.Int32, h, rows, d), 0), f32)
		return Sin(Add(Add(MulScalar(i, a), MulScalar(j, b)), hh))
	}
	q = ConvertDType(MulScalar(wave(m, 0.37, 1.3), 3), dtypes.BFloat16)
	cent = ConvertDType(MulScalar(wave(k, 0.71, 0.53), 3), dtypes.BFloat16)
	c := Iota(g, shapes.Make(dtypes.Int32, h, k), 1)
	counts = Where(Equal(ModScalar(c, 7), ZerosLike(c)), Zeros(g, shapes.Make(f32, h, k)), ConvertDType(AddScalar(ModScalar(c, 13), 1), f32))
	return q, cent, counts
}
