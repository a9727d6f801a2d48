package llama

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// SqueezeOptions configure Squeezed Attention over a prefix's fixed context. Exactly one of Budget
// (fixed-budget mode) and Sparsity (calibrated-threshold mode, the paper's) is set.
type SqueezeOptions struct {
	// Budget is the fraction of the clustered fixed-context keys kept for each user input and each decode
	// step (fixed-budget mode), in (0, 1].
	Budget float64
	// Sparsity is the target fraction of the clustered fixed-context keys dropped (calibrated-threshold
	// mode), in (0, 1): one global threshold over all layers and heads is calibrated on the context's own
	// observation-window queries so that they drop this fraction of the keys; every user input and decode
	// step then keeps the clusters whose estimated probability exceeds it.
	Sparsity float64
	// Centroids is the number of centroids per KV head as a fraction of the context (of its KV capacity
	// bucket, so that contexts of one bucket share executables; default 0.05).
	Centroids float64
	// Window is the observation window: the context's last tokens, never clustered and always attended
	// (default 100, at most a tenth of the context).
	Window int
	// Iterations of k-means (default 10; the coarse k-means of a hierarchical index runs as many).
	Iterations int
	// Hierarchical adds a coarse level to the index (the paper's hierarchical lookup, with its cost
	// realised): the fine centroids are clustered into coarse ones, and every step scores the coarse
	// centroids, then only the fine centroids under the best coarse clusters (squeeze.HierarchicalScores).
	// The fine clusters it does not score keep none of their keys. Works in both modes.
	Hierarchical bool
	// CoarseCentroids is the number of coarse centroids per KV head as a fraction of the context (of its
	// capacity bucket, as Centroids), below Centroids: hierarchical index only (default 0.01, the paper's
	// level 1).
	CoarseCentroids float64
	// CoarseKeep is the fraction of the fine centroids scored per step, in (0, 1]: the children of the
	// best coarse clusters, best first, fill ⌈CoarseKeep·K⌉ static slots (hierarchical index only).
	// Default: twice the fraction of keys a step keeps (the budget, or 1 - sparsity), at least 0.5 and at
	// most 1 — the paper's level-1 pass prunes about half, and the scored clusters then hold about twice
	// the keys a step keeps, so the threshold or budget chooses among them rather than being cut short by
	// the pruning (sq70: 0.6, sq90: 0.5, budget 1: 1). 1 scores every fine centroid (the flat selection).
	CoarseKeep float64
	// Mass selects, in calibrated mode, the attention-mass selection instead of the reference's global
	// threshold on a cluster's estimated probability: every head of every step keeps its best clusters
	// until their estimated attention mass (count × estimated probability) reaches one global target,
	// calibrated so that the observation window's queries, one token at a time as decode steps select,
	// keep 1 - Sparsity of the clustered keys on average (squeeze.SelectKeysMass). A head whose attention is
	// spread over many keys (the first layer's) then keeps many, and a sharp head few; the global threshold
	// keeps about the same fraction in every layer and drops most of a spread head's attention. The
	// calibration sets one static kept-list size for every layer (the busiest layer's). Flat index only.
	Mass bool
	// Remainder attends the keys a step drops approximately instead of leaving them out: each cluster
	// stands for its dropped keys as one key, its centroid, weighted by their number, with the mean of its
	// keys' values (squeeze.RemainderAttention), so that a head whose attention is spread over many
	// clusters keeps its estimated share of it. The means are computed from the prefix's values with the
	// clustering (and again when an index is loaded; they are not stored). A step then reads each
	// centroid's key and mean value, which the kept fraction counts as one key. Over a hierarchical index,
	// the keys of the fine clusters a step does not score stand as their coarse centroid, with their own
	// mean value (squeeze.HierarchicalMeanSums, computed on the device like the means).
	Remainder bool
}

// Normalized returns the options with their defaults filled in, or an error naming the bad option.
func (o SqueezeOptions) Normalized() (SqueezeOptions, error) {
	switch {
	case math.IsNaN(o.Budget) || math.IsNaN(o.Sparsity):
		return o, errors.New("llama: squeeze budget or sparsity is NaN")
	case o.Budget != 0 && o.Sparsity != 0:
		return o, fmt.Errorf("llama: squeeze budget %g and sparsity %g both set: choose the fixed-budget or the calibrated mode", o.Budget, o.Sparsity)
	case o.Budget == 0 && o.Sparsity == 0:
		return o, errors.New("llama: squeeze options set neither a budget nor a sparsity")
	case o.Budget < 0 || o.Budget > 1:
		return o, fmt.Errorf("llama: squeeze budget %g outside (0, 1]", o.Budget)
	case o.Sparsity < 0 || o.Sparsity >= 1:
		return o, fmt.Errorf("llama: squeeze sparsity %g outside (0, 1)", o.Sparsity)
	}
	if o.Centroids == 0 {
		o.Centroids = 0.05
	}
	if !(o.Centroids > 0 && o.Centroids <= 0.5) {
		return o, fmt.Errorf("llama: squeeze centroids fraction %g outside (0, 0.5]", o.Centroids)
	}
	if o.Window == 0 {
		o.Window = 100
	}
	if o.Window < 0 || o.Window > 1<<16 {
		return o, fmt.Errorf("llama: squeeze observation window %d outside [1, 65536]", o.Window)
	}
	if o.Iterations == 0 {
		o.Iterations = 10
	}
	if o.Iterations < 0 || o.Iterations > 1000 {
		return o, fmt.Errorf("llama: %d k-means iterations outside [1, 1000]", o.Iterations)
	}
	if o.Mass && !o.Calibrated() {
		return o, errors.New("llama: the attention-mass selection needs a sparsity (calibrated mode), not a fixed budget")
	}
	if o.Mass && o.Hierarchical {
		return o, fmt.Errorf("llama: %w: the attention-mass selection over a hierarchical index", ErrUnsupported)
	}
	if !o.Hierarchical {
		if o.CoarseCentroids != 0 || o.CoarseKeep != 0 {
			return o, fmt.Errorf("llama: squeeze coarse centroids %g and coarse keep %g apply to a hierarchical index only", o.CoarseCentroids, o.CoarseKeep)
		}
		return o, nil
	}
	if o.CoarseCentroids == 0 {
		o.CoarseCentroids = 0.01
	}
	if !(o.CoarseCentroids > 0 && o.CoarseCentroids < o.Centroids) {
		return o, fmt.Errorf("llama: squeeze coarse centroids fraction %g outside (0, %g) (below the centroids fraction)", o.CoarseCentroids, o.Centroids)
	}
	if o.CoarseKeep == 0 {
		kept := o.Budget
		if o.Calibrated() {
			kept = 1 - o.Sparsity
		}
		o.CoarseKeep = math.Round(min(1, max(0.5, 2*kept))*1e6) / 1e6
	}
	if !(o.CoarseKeep > 0 && o.CoarseKeep <= 1) {
		return o, fmt.Errorf("llama: squeeze coarse keep fraction %g outside (0, 1]", o.CoarseKeep)
	}
	return o, nil
}

// Calibrated reports whether the options select the calibrated-threshold mode.
func (o SqueezeOptions) Calibrated() bool { return o.Sparsity > 0 }

// String is a canonical description of the options (defaults as given), used in cache keys.
func (o SqueezeOptions) String() string {
	s := fmt.Sprintf("budget=%g sparsity=%g centroids=%g window=%d iterations=%d",
		o.Budget, o.Sparsity, o.Centroids, o.Window, o.Iterations)
	if o.Hierarchical {
		s += fmt.Sprintf(" hierarchical coarse=%g coarse_keep=%g", o.CoarseCentroids, o.CoarseKeep)
	}
	if o.Mass {
		s += " mass"
	}
	if o.Remainder {
		s += " remainder"
	}
	return s
}

// thresholdMargin sizes the calibrated mode's static kept-key list: it holds thresholdMargin × the
// target kept fraction (1 - sparsity) of the context capacity (bucketed), the same for every layer and
// head. A step whose queries pass more keys in a head than that keeps the best-scoring ones that fit (the
// threshold mask intersected with a budget mask), so the global threshold is then a little stricter for
// that head. Measured on the bundled model (1,536-token context filling its capacity, 40 decode steps):
// 2-10% of the head-steps pass more keys than fit, and the list leaves out 0.3-3% of the passing keys
// (sparsity 0.7: 0.3%; 0.5: 3%), always the lowest-scoring ones.
const thresholdMargin = 1.25

// squeezeIndex is a prefix's clustering: per layer and KV head, centroids of the clustered keys.
type squeezeIndex struct {
	opts      SqueezeOptions // normalized
	clustered int            // keys [0, clustered) are clustered; [clustered, cachedRows) are the window
	window    int
	// budget is the number of clustered keys kept per head and step: in fixed-budget mode exactly that
	// many, in calibrated mode at most that many (those above the threshold, the best ones if more).
	budget  int
	maxKept int // static size of the kept-key lists (budget + window, bucketed by capacity)
	k       int
	// k1 is a hierarchical index's number of coarse centroids (0: flat) and slots the number of fine
	// centroids each step scores (⌈CoarseKeep·K⌉; K for a flat index).
	k1, slots int
	capacity  int // the prefix's KV capacity (the static shapes follow it)
	// centroids are rounded to bfloat16 (their storage dtype) right after clustering, so that an index
	// loaded from disk is bit for bit the one computed; a bfloat16 model keeps them as bfloat16 tensors,
	// a float32 model as float32 ones (Runner.centroidDType). A hierarchical index packs its coarse level
	// into centroids, counts and starts (see unpackIndex).
	centroids []*tensors.Tensor // per layer [numKVHeads, K(+K1), headDim] bfloat16 or float32
	counts    []*tensors.Tensor // per layer [numKVHeads, K(+2·K1)] float32
	labels    []*tensors.Tensor // per layer [numKVHeads, capacity] int32 (rows ≥ clustered: 0 or unused)
	// starts and order are the keys sorted by cluster (squeeze.ClusterOrder of labels and counts), for the
	// step's cluster-level selection: computed on the device after clustering or loading, never stored.
	starts []*tensors.Tensor // per layer [numKVHeads, K(+F)] int32: first slot of each cluster in order
	order  []*tensors.Tensor // per layer [numKVHeads, capacity] int32: the clustered keys by cluster, then the rest
	// means are each cluster's mean value (squeeze.ClusterMeans) with opts.Remainder, computed on the
	// device from the prefix's values after clustering or loading, never stored; nil otherwise.
	means []*tensors.Tensor // per layer [numKVHeads, K, headDim] in the KV dtype
	// meanSums are a hierarchical index's running count-weighted sums of the means (squeeze.HierarchicalMeanSums),
	// with the means; nil for a flat index.
	meanSums []*tensors.Tensor // per layer [numKVHeads, K+1, headDim] float32
	// Calibrated mode: the global threshold on a cluster's estimated probability, and the fraction of the
	// clustered keys the calibration queries kept with it.
	threshold      float32
	calibratedKept float64
	// layerKept are the attention-mass mode's static kept-list sizes per layer (window slots included),
	// set by the calibration (one size for all layers since session 8; stored per layer, and older entries
	// with a size per layer still load); nil in the other modes, where every layer's list has maxKept slots.
	layerKept     []int
	clusterTime   time.Duration // how long the clustering took
	calibrateTime time.Duration // how long the calibration took
	loadTime      time.Duration // how long loading the index took (loaded from storage)
	loaded        bool
}

// calibrated reports whether the index is in calibrated-threshold mode.
func (sq *squeezeIndex) calibrated() bool { return sq.opts.Sparsity > 0 }

// layerInputs are the index tensors a squeezed step takes for layer l: centroids, counts, starts, order,
// and the means with opts.Remainder (and the mean sums of a hierarchical index).
func (sq *squeezeIndex) layerInputs(l int) []*tensors.Tensor {
	ts := []*tensors.Tensor{sq.centroids[l], sq.counts[l], sq.starts[l], sq.order[l]}
	if sq.opts.Remainder {
		ts = append(ts, sq.means[l])
		if sq.k1 > 0 {
			ts = append(ts, sq.meanSums[l])
		}
	}
	return ts
}

// inputsPerLayer is the number of layerInputs.
func (sq *squeezeIndex) inputsPerLayer() int {
	switch {
	case sq.opts.Remainder && sq.k1 > 0:
		return 6
	case sq.opts.Remainder:
		return 5
	}
	return 4
}

// listSize is layer l's static kept-list size (window slots included).
func (sq *squeezeIndex) listSize(l int) int {
	if sq.layerKept != nil {
		return sq.layerKept[l]
	}
	return sq.maxKept
}

// listKey names the kept-list sizes in executable cache keys.
func (sq *squeezeIndex) listKey() string {
	if sq.layerKept == nil {
		return strconv.Itoa(sq.maxKept)
	}
	return fmt.Sprint(sq.layerKept)
}

// squeezeLayer are one layer's index nodes inside a step graph.
type squeezeLayer struct {
	centroids, counts         *Node // [numKVHeads, K, headDim] bfloat16 or float32 (centroidDType), [numKVHeads, K] float32 (or packed: unpackIndex)
	starts, order             *Node // [numKVHeads, K], [numKVHeads, ctxCap] int32 (squeeze.ClusterOrder)
	means                     *Node // [numKVHeads, K, headDim]: the clusters' mean values (Remainder); nil: off
	meanSums                  *Node // [numKVHeads, K+1, headDim]: a hierarchical index's (Remainder); nil: flat
	clustered, window, budget *Node // scalar int32: they vary per prefix without recompiling
	maxKept                   int
	// threshold is the calibrated mode's global threshold (scalar float32); nil in fixed-budget mode.
	// With mass, it is the attention-mass mode's target (squeeze.SelectKeysMass).
	threshold *Node
	mass      bool
	// kernel is how the kept keys are attended (zero: squeeze.KernelAuto, the engine's choice; the attention
	// benchmark sets others).
	kernel squeeze.Kernel
	// search is how the selection finds its boundary (zero: squeezeSearch, from SQLLM_SQUEEZE_SEARCH).
	search squeeze.Search
	// selectMode is when the selection runs in the selection kernels (zero: squeeze.SelectKernels, from
	// SQLLM_SQUEEZE_SELECT; the attention benchmark sets others).
	selectMode squeeze.SelectMode
	// scoresMode is when a user input's cluster scores run in the cluster-score kernels (zero:
	// squeeze.ScoresKernels, from SQLLM_SQUEEZE_SCORES; the attention benchmark sets others).
	scoresMode squeeze.SelectMode
	// segMode is when a decode step's dynamic segment is attended in the paged kernel's launch (zero:
	// squeeze.PagedSeg, from SQLLM_SQUEEZE_PAGEDSEG; the attention benchmark sets others).
	segMode squeeze.SelectMode
	// lookupMode is when a decode step's cluster scores and boundary run in the lookup kernel (zero:
	// squeeze.LookupKernel, from SQLLM_SQUEEZE_LOOKUP; the attention benchmark sets others).
	lookupMode squeeze.SelectMode
	// freshDyn: the dynamic segment was empty before this step (stepKind.freshDyn): its valid rows are the
	// step's own tokens, rows [0, n), and their attention is causal.
	freshDyn bool
	// keptKeys is set by squeezedAttention: the step's kept clustered keys over the layer's KV heads
	// (scalar int32), which the step returns summed over the layers (Sequence.SqueezeKept).
	keptKeys *Node
}

type squeezeInputs struct {
	layers []squeezeLayer
}

// SqueezeInfo describes a prefix's Squeezed Attention index.
type SqueezeInfo struct {
	Options SqueezeOptions // normalized
	// ListSizes are the attention-mass mode's static kept-list sizes per layer (window slots included),
	// from its calibration; nil in the other modes.
	ListSizes []int
	// Budget is the number of clustered keys kept per KV head and step: exactly (fixed-budget mode; at
	// most with a hierarchical index, whose unscored clusters keep nothing) or at most (calibrated mode:
	// the static size of the kept list, see thresholdMargin).
	Clustered, Window, Budget, Centroids int
	// CoarseCentroids is a hierarchical index's number of coarse centroids per KV head (0: flat), and
	// ScoredCentroids the number of fine centroids a step scores: Centroids for a flat index, the static
	// slots of the best coarse clusters' children (⌈CoarseKeep·Centroids⌉) for a hierarchical one.
	CoarseCentroids, ScoredCentroids int
	// PagedDecode says whether decode steps attend the kept keys with the paged Triton kernel (squeeze.PagedFor)
	// rather than XLA's gathers.
	PagedDecode bool
	// PagedSegDecode says whether those decode steps also attend the dynamic segment (the user input and the
	// generated tokens) in the paged kernel's launch (squeeze.PagedSegFor) rather than XLA's dense attention.
	PagedSegDecode bool
	// SelectKernels says whether steps select their kept keys with the selection Triton kernels
	// (squeeze.SelectFor) rather than XLA's ops.
	SelectKernels bool
	// ScoreKernels says whether user inputs (of at least squeeze.ScoresMinQueries query rows a KV head) score
	// the clusters with the cluster-score Triton kernels (squeeze.ScoresFor; a flat index without the remainder)
	// rather than XLA's ops.
	ScoreKernels bool
	// LookupKernel says whether decode steps (at most squeeze.LookupMaxQueries query rows a KV head) compute their
	// cluster scores and the selection's boundary in the lookup Triton kernel (squeeze/lookupk.go) after XLA's
	// product with the centroids: a flat index without the remainder, not the attention-mass mode.
	LookupKernel bool
	// KeptFraction is the fraction of the fixed context's keys read per step, the centroids a step scores
	// counted as keys: (kept clustered keys + window + CoarseCentroids + ScoredCentroids) / context keys.
	// Fixed-budget mode: exact (flat). Calibrated mode: with the kept keys of the calibration queries
	// (CalibratedKept); other queries keep more or fewer.
	KeptFraction float64
	// Calibrated mode: the threshold and the fraction of the clustered keys that the calibration queries
	// (the window's own) keep with it.
	Threshold      float32
	CalibratedKept float64
	// ClusterTime and CalibrateTime are how long clustering and calibration took (0 for a loaded index);
	// LoadTime how long loading a stored index took.
	ClusterTime, CalibrateTime, LoadTime time.Duration
	// Loaded says the index was loaded from storage (the prefix cache) instead of computed.
	Loaded bool
}

// newSqueezeIndex works out the geometry of the index of a prefix of the given cached rows and KV
// capacity: clustered keys, window, centroids, budget and the static kept-list size. opts must be
// normalized.
func newSqueezeIndex(opts SqueezeOptions, rows, capacity int) (*squeezeIndex, error) {
	window := min(opts.Window, rows/10)
	clustered := rows - window
	if clustered < 64 || int(math.Round(opts.Centroids*float64(clustered))) < 2 {
		return nil, fmt.Errorf("llama: a fixed context of %d tokens is too short to squeeze", rows+1)
	}
	// Static shapes follow the context capacity (a bucket), so prefixes of different lengths share
	// executables: K and the kept-list size are fractions of the capacity, the actual counts are inputs.
	k := max(2, int(math.Round(opts.Centroids*float64(capacity))))
	idx := &squeezeIndex{opts: opts, clustered: clustered, window: window, k: k, slots: k, capacity: capacity}
	if opts.Hierarchical {
		idx.k1 = max(2, int(math.Round(opts.CoarseCentroids*float64(capacity))))
		if idx.k1 >= k {
			return nil, fmt.Errorf("llama: a fixed context of %d tokens is too short for a hierarchical index (%d coarse centroids for %d centroids)",
				rows+1, idx.k1, k)
		}
		idx.slots = min(k, int(math.Ceil(opts.CoarseKeep*float64(k))))
	}
	if opts.Mass {
		// An upper bound until the calibration sizes each layer's list (layerKept).
		idx.maxKept = bucket64(capacity) + bucket64(opts.Window)
		idx.budget = idx.maxKept - window
	} else if opts.Calibrated() {
		keep := min(1, thresholdMargin*(1-opts.Sparsity))
		slots := bucket64(int(math.Ceil(keep * float64(capacity))))
		idx.maxKept = slots + bucket64(opts.Window)
		idx.budget = idx.maxKept - window // every slot the window does not use
	} else {
		idx.budget = max(1, int(math.Ceil(opts.Budget*float64(clustered))))
		idx.maxKept = bucket64(int(math.Ceil(opts.Budget*float64(capacity)))) + bucket64(opts.Window)
	}
	return idx, nil
}

// Squeeze clusters the prefix's keys so that sequences started from it attend only to the keys that
// matter; in calibrated mode it then sets the threshold (see SqueezeOptions.Sparsity). It replaces any
// previous index. Prefixes shorter than a few hundred tokens gain nothing and are left dense (an error
// says so).
func (p *Prefix) Squeeze(ctx context.Context, opts SqueezeOptions) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("llama: squeeze: %v", r)
		}
	}()
	if p.r.cfg.SlidingWindow > 0 {
		return fmt.Errorf("llama: %w: Squeezed Attention with a sliding-window model", ErrUnsupported)
	}
	if opts, err = opts.Normalized(); err != nil {
		return err
	}
	if p.kv == nil {
		return errors.New("llama: squeeze: the prefix is freed")
	}
	idx, err := newSqueezeIndex(opts, p.cachedRows(), p.kv.capacity())
	if err != nil {
		return err
	}
	start := time.Now()
	L := p.r.cfg.NumHiddenLayers
	hb := headBatch(p.r.cfg.NumKeyValueHeads, idx.capacity, idx.k)
	exec, err := p.r.clusterExecHeads(idx.k, idx.k1, idx.slots, opts.Iterations, hb)
	if err != nil {
		return err
	}
	// One layer per call: the k-means of every layer in one executable needed all layers' similarity
	// matrices at once (15 GB for a 32K context of the LLaMA-2-7B shape, which ran out of memory).
	for l := range L {
		if err := ctx.Err(); err != nil {
			idx.free()
			return err
		}
		out, err := p.r.callHeadBatched(exec, hb, []*tensors.Tensor{p.kv.k[l]}, int32(idx.clustered))
		if err != nil {
			idx.free()
			return fmt.Errorf("llama: clustering layer %d: %w", l, err)
		}
		idx.centroids = append(idx.centroids, out[0])
		idx.counts = append(idx.counts, out[1])
		idx.labels = append(idx.labels, out[2])
		idx.starts = append(idx.starts, out[3])
		idx.order = append(idx.order, out[4])
	}
	if err := p.clusterMeans(idx); err != nil {
		idx.free()
		return err
	}
	// Wait for the device so the clustering time is real.
	if _, err := tensors.CopyFlatData[float32](idx.counts[0]); err != nil {
		idx.free()
		return err
	}
	idx.clusterTime = time.Since(start)
	if opts.Calibrated() {
		if err := ctx.Err(); err != nil {
			idx.free()
			return err
		}
		start := time.Now()
		if err := p.calibrate(idx); err != nil {
			idx.free()
			return err
		}
		idx.calibrateTime = time.Since(start)
	}
	p.dropSqueeze()
	p.sq = idx
	return nil
}

// SqueezeInfo describes the prefix's index; ok is false for a dense prefix.
func (p *Prefix) SqueezeInfo() (info SqueezeInfo, ok bool) {
	sq := p.sq
	if sq == nil {
		return info, false
	}
	kept := float64(sq.budget)
	if sq.calibrated() {
		kept = sq.calibratedKept * float64(sq.clustered)
	}
	paged := squeeze.PagedFor(p.r.backend, p.r.cfg.GroupSize(), p.r.cfg.HeadDim, p.r.DType())
	return SqueezeInfo{Options: sq.opts, ListSizes: slices.Clone(sq.layerKept), Clustered: sq.clustered, Window: sq.window, Budget: sq.budget,
		Centroids: sq.k, CoarseCentroids: sq.k1, ScoredCentroids: sq.slots,
		KeptFraction:   sq.readFraction(kept),
		PagedDecode:    paged,
		PagedSegDecode: paged && squeeze.PagedSegFor(p.r.backend, p.r.cfg.GroupSize(), p.r.cfg.HeadDim) && !sq.opts.Remainder,
		SelectKernels:  squeeze.SelectFor(p.r.backend, sq.slots),
		ScoreKernels:   sq.k1 == 0 && !sq.opts.Remainder && squeeze.ScoresFor(p.r.backend, p.r.cfg.HeadDim, p.r.centroidDType()),
		LookupKernel:   sq.k1 == 0 && !sq.opts.Remainder && !sq.opts.Mass && squeeze.LookupFor(p.r.backend, p.r.cfg.GroupSize(), sq.k),
		Threshold:      sq.threshold, CalibratedKept: sq.calibratedKept,
		ClusterTime: sq.clusterTime, CalibrateTime: sq.calibrateTime, LoadTime: sq.loadTime, Loaded: sq.loaded}, true
}

// readFraction is the fraction of the fixed context's keys a step reads when it keeps `kept` clustered
// keys per KV head: those, the window and the centroids it scores, over the context's keys.
func (sq *squeezeIndex) readFraction(kept float64) float64 {
	return (kept + float64(sq.window+sq.k1+sq.slots)) / float64(sq.clustered+sq.window)
}

// SqueezeKept measures what the sequence's steps over its squeezed prefix read: the mean over those steps
// of the fraction of the fixed context's keys read (kept clustered keys per KV head and layer, plus the
// window and the centroids scored, as SqueezeInfo.KeptFraction counts them), and the number of steps.
// steps is 0 for a sequence without a squeeze index or before any step. A step over several tokens (a
// user input) selects once and counts once. It waits for the steps, so call it after generating.
func (s *Sequence) SqueezeKept() (fraction float64, steps int, err error) {
	if s.sq == nil || len(s.keptStats) == 0 {
		return 0, 0, nil
	}
	total := 0.0
	for _, t := range s.keptStats {
		v, err := tensors.CopyFlatData[int32](t)
		if err != nil {
			return 0, 0, fmt.Errorf("llama: reading the squeezed steps' kept keys: %w", err)
		}
		total += float64(v[0])
	}
	c := s.r.cfg
	perHead := total / float64(len(s.keptStats)*c.NumHiddenLayers*c.NumKeyValueHeads)
	return s.sq.readFraction(perHead), len(s.keptStats), nil
}

func (p *Prefix) dropSqueeze() {
	if p.sq == nil {
		return
	}
	p.sq.free()
	p.sq = nil
}

// free releases the index's tensors.
func (sq *squeezeIndex) free() {
	for _, ts := range [][]*tensors.Tensor{sq.centroids, sq.counts, sq.labels, sq.starts, sq.order, sq.means, sq.meanSums} {
		for _, t := range ts {
			t.FinalizeAll()
		}
	}
}

// squeezedAttention is attention over the fixed context read sparsely (the keys of the clusters that
// matter for this step's queries, plus the observation window), merged by log-sum-exp with dense causal
// attention over the dynamic segment. One selection per KV head for the step's whole input (all its
// tokens and all the query heads of the group): in fixed-budget mode the budget's best keys, in
// calibrated mode the keys whose cluster's score exceeds the threshold (at most budget of them).
func squeezedAttention(c *Config, q, ctxK, ctxV, dynK, dynV, dynMask *Node, sq *squeezeLayer) *Node {
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	dynCap := dynK.Shape().Dimensions[1]
	scale := 1 / math.Sqrt(float64(hd))

	qg := Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3), kvh, n*group, hd) // [numKVHeads, n*group, headDim]
	dm := Reshape(BroadcastToDims(Reshape(dynMask, n, 1, dynCap), n, group, dynCap), 1, n*group, dynCap)
	// Selection at the cluster level (squeeze.SelectKeys / SelectKeysThreshold): in fixed-budget mode the
	// budget's best keys; in calibrated mode the clusters above the threshold, at most budget keys (the
	// list's free slots: the best of them when more pass); then the observation window.
	// The centroids are bfloat16 values, and the index keeps a bfloat16 model's in bfloat16
	// (Runner.centroidDType), so every step, decode steps included, reads half the bytes of float32 ones for
	// the lookup (at 128K context of the LLaMA-2-7B shape, 54 MB a layer instead of 107) and multiplies them
	// with the queries in bfloat16, accumulated in float32 (exact products: both are bfloat16 values). In the
	// attention benchmark (H200, session 9, 10% budget) a user input's step with float32 centroids took 542 µs
	// a layer for a 512-token input over a 32K context of the LLaMA-2-7B shape and 1,590 at 128K, against 313
	// and 868 with bfloat16 centroids (and fused attention over the input's own tokens); with bfloat16
	// centroids the decode lookup's cluster scores took 8.9 µs a layer at 32K and 26.7 at 128K (session 10; not
	// compared with float32 ones in the same run). On a GPU the selection then runs in the selection kernels
	// (squeeze/selectk.go, SQLLM_SQUEEZE_SELECT). Centroids of another dtype than the queries' are multiplied
	// in float32 (lookupCentroids).
	centroids := lookupCentroids(sq.centroids, q.DType())
	ix := unpackIndex(squeeze.LayerIndex{Centroids: centroids, Counts: sq.counts, Starts: sq.starts, Order: sq.order,
		Clustered: sq.clustered, Window: sq.window, Budget: sq.budget, Threshold: sq.threshold, Mass: sq.mass, MaxKept: sq.maxKept,
		Means: sq.means, MeanSums: sq.meanSums, Search: cmp.Or(sq.search, squeezeSearch), Select: sq.selectMode, Scores: sq.scoresMode, Seg: sq.segMode,
		Lookup: sq.lookupMode})
	// With ix.Means, the dropped keys too, approximately (SqueezeOptions.Remainder).
	if squeeze.UsesPaged(qg, ctxK, ctxV, sq.kernel) {
		// With the paged kernel in the graph, XLA fused the dynamic segment's scores with the cache update
		// that writes dynK/dynV into one reduction kernel of 152 µs a layer (10 µs otherwise; H200, LLaMA-2-7B
		// shape, traced in session 8): the barrier makes the scores read the updated cache instead.
		b := OptimizationBarriers(dynK, dynV)
		dynK, dynV = b[0], b[1]
	}
	// The dynamic segment's part: over a fresh segment (a user input's first chunk after a prefix: its rows
	// [0, n) are the step's own keys) through the backend's fused causal attention, instead of a graph that
	// writes the [KV heads, n·group, dynCap] float32 scores and reads them back. Otherwise (decode steps) through
	// squeeze.AttendSelectedDyn: with the paged kernel, in the same launch where squeeze.PagedSeg takes it
	// (SQLLM_SQUEEZE_PAGEDSEG), else the masked dense graph merged with the kept keys' part.
	//
	// There a grouped-query model's rows are laid out head-major ([numKVHeads, group*n, headDim], row j*n+i:
	// query head j of token i): the selection and the kept keys' attention treat a KV head's rows alike,
	// whatever their order, and the causal call then takes each query head's n rows as they are, where
	// token-major rows need its queries, output and log-sum-exp transposed (squeeze.CausalAttentionFused). In the
	// attention benchmark (H100, session 19, 512-token input, by the slope) the LLaMA-3-8B shape's step took 166.3 /
	// 166.7 against 174.6 µs a layer at 32K and 472.0 / 473.1 against 476.7 at 128K; a model without grouped-query
	// attention (one row a token) has the same layout either way.
	var out, kept *Node
	if sq.freshDyn && n*group >= squeeze.FusedMinQueries {
		qh := Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 2, 0, 3), kvh, group*n, hd)
		sparse, k := squeeze.AttendSelected(qh, ctxK, ctxV, ix, scale, sq.kernel)
		dyn, ok := squeeze.CausalAttentionFusedHeadMajor(qh, Slice(dynK, AxisRange(), AxisRange(0, n)), Slice(dynV, AxisRange(), AxisRange(0, n)), scale)
		if !ok {
			dmh := Reshape(BroadcastToDims(Reshape(dynMask, 1, n, dynCap), group, n, dynCap), 1, group*n, dynCap)
			dyn = squeeze.DenseAttention(qh, dynK, dynV, dmh, scale)
		}
		out, kept = squeeze.Merge(sparse, dyn).Out, k // [numKVHeads, group*n, headDim] float32
		out = TransposeAllAxes(Reshape(ConvertDType(out, q.DType()), kvh, group, n, hd), 2, 0, 1, 3)
	} else {
		p, k := squeeze.AttendSelectedDyn(qg, ctxK, ctxV, dynK, dynV, dm, ix, scale, sq.kernel)
		out, kept = p.Out, k // [numKVHeads, n*group, headDim] float32
		out = TransposeAllAxes(Reshape(ConvertDType(out, q.DType()), kvh, n, group, hd), 1, 0, 2, 3)
	}
	// The clustered keys this step reads, summed over the KV heads (the window's rows are not counted).
	sq.keptKeys = ReduceSum(MaxScalar(Sub(kept, BroadcastToDims(ConvertDType(sq.window, dtypes.Int32), kept.Shape().Dimensions...)), 0))
	return Reshape(out, n, c.NumAttentionHeads*hd)
}

// lookupCentroids returns an index's centroids as a lookup with queries of dtype qd multiplies them: as
// stored when their dtype is the queries' (a bfloat16 model's bfloat16 centroids: a half-precision product
// accumulated in float32), else as float32 (exact: the centroids are bfloat16 values), so that a float32
// query is never multiplied in half precision.
func lookupCentroids(centroids *Node, qd dtypes.DType) *Node {
	if centroids.DType() == qd {
		return centroids
	}
	return ConvertDType(centroids, dtypes.Float32)
}

// The packed hierarchical index. The runner hands each layer's index to the step graph as four tensors
// (centroids, counts, starts, order) and knows nothing of its levels; a hierarchical index packs its
// coarse level into the first three, and the static sizes K, K1 and F (the fine centroids scored per
// step) follow from their shapes, so the same inputs serve both kinds and the calibration too:
//
//	centroids [H, K+K1, D]  the fine centroids (grouped by coarse cluster), then the coarse centroids
//	counts    [H, K+2·K1]   keys per fine cluster, keys per coarse cluster, fine clusters per coarse cluster
//	starts    [H, K+F]      first slot of each fine cluster in order, then F unused zeros: their number is F
//
// A flat index is [H, K, D], [H, K], [H, K] (K1 = 0).

// unpackIndex splits a packed hierarchical index into LayerIndex's fields; a flat one is returned as it is.
func unpackIndex(ix squeeze.LayerIndex) squeeze.LayerIndex {
	a := ix.Centroids.Shape().Dimensions[1] // K + K1
	k1 := ix.Counts.Shape().Dimensions[1] - a
	if k1 == 0 {
		return ix
	}
	k := a - k1
	cols := func(x *Node, from, to int) *Node { return Slice(x, AxisRange(), AxisRange(from, to)) }
	ix.CoarseCentroids, ix.Centroids = cols(ix.Centroids, k, a), cols(ix.Centroids, 0, k)
	ix.CoarseCounts = cols(ix.Counts, k, a)
	ix.CoarseChildren = ConvertDType(cols(ix.Counts, a, a+k1), dtypes.Int32)
	ix.Counts = cols(ix.Counts, 0, k)
	ix.FineSlots = ix.Starts.Shape().Dimensions[1] - k
	ix.Starts = cols(ix.Starts, 0, k)
	return ix
}

// bucket64 rounds up to a multiple of 64.
func bucket64(n int) int { return (n + 63) / 64 * 64 }

// namedExec returns the executable cached under key, building it on first use.
func (r *Runner) namedExec(key string, build func() (*graph.Exec, error)) (*graph.Exec, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.sqSteps[key]; ok {
		return e, nil
	}
	e, err := build()
	if err != nil {
		return nil, err
	}
	if r.sqSteps == nil {
		r.sqSteps = map[string]*graph.Exec{}
	}
	r.sqSteps[key] = e
	return e, nil
}

// clusterBytes bounds the float32 bytes of the [heads, capacity, K] similarity (and one-hot) matrices of one
// clustering call: a layer whose KV heads need more is clustered a few heads per call (headBatch). The
// LLaMA-2-7B shape at 32K (32 heads × 32,768 × 1,638) fits in one call; the LLaMA-3-8B shape at 128K (8 ×
// 131,072 × 6,554: 27 GB, out of memory on an H100 in session 3) takes 2 heads per call.
var clusterBytes = 8 << 30

// headBatch is the number of KV heads clustered per call for a capacity and K: all of them when their
// similarity matrix fits clusterBytes, else the largest divisor of heads that does (at least 1).
func headBatch(heads, capacity, k int) int {
	for hb := heads; hb > 1; hb-- {
		if heads%hb == 0 && hb*capacity*k*4 <= clusterBytes {
			return hb
		}
	}
	return 1
}

// headSlice turns the inputs of a head-batched executable (callHeadBatched) into the batch's: the [H, ...]
// tensors sliced to heads [h0, h0+hb), where h0 is the last input, dropped; the other scalars as they are.
// A batch of every head (no h0 input) is returned as it is.
func headSlice(in []*Node, hb int) []*Node {
	first := in[0].Shape().Dimensions[0]
	if hb >= first {
		return in
	}
	h0 := in[len(in)-1]
	out := make([]*Node, 0, len(in)-1)
	for _, x := range in[:len(in)-1] {
		if x.Rank() == 0 {
			out = append(out, x)
			continue
		}
		// A gather of hb whole head slices (the pure-Go backend has no DynamicSlice).
		heads := Iota(x.Graph(), shapes.Make(dtypes.Int32, hb, 1), 0)
		out = append(out, Gather(x, Add(heads, BroadcastToDims(ConvertDType(h0, dtypes.Int32), hb, 1))))
	}
	return out
}

// callHeadBatched calls a per-layer executable whose inputs are the [H, ...] tensors then the scalars, and
// whose outputs are all [H, ...]: at once when hb covers every head, else hb heads per call (the
// executable built with headSlice takes the first head as a last int32 input), with each output then
// concatenated over the heads on the device.
func (r *Runner) callHeadBatched(exec *graph.Exec, hb int, perHead []*tensors.Tensor, scalars ...any) ([]*tensors.Tensor, error) {
	h := perHead[0].Shape().Dimensions[0]
	args := make([]any, 0, len(perHead)+len(scalars)+1)
	for _, t := range perHead {
		args = append(args, t)
	}
	args = append(args, scalars...)
	if hb >= h {
		return exec.Call(args...)
	}
	var parts [][]*tensors.Tensor
	defer func() {
		for _, p := range parts {
			for _, t := range p {
				t.FinalizeAll()
			}
		}
	}()
	for h0 := 0; h0 < h; h0 += hb {
		out, err := exec.Call(append(slices.Clone(args), int32(h0))...)
		if err != nil {
			return nil, err
		}
		parts = append(parts, out)
	}
	n, outs := len(parts), len(parts[0])
	cat, err := r.namedExec(fmt.Sprintf("concat_heads/%d/%d", n, outs), func() (*graph.Exec, error) {
		e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
			res := make([]*Node, outs)
			for o := range outs {
				xs := make([]*Node, n)
				for i := range n {
					xs[i] = in[i*outs+o]
				}
				res[o] = Concatenate(xs, 0)
			}
			return res
		})
		if err != nil {
			return nil, err
		}
		return e.WithName("concat_heads").SetMaxCache(maxCompiled), nil
	})
	if err != nil {
		return nil, err
	}
	cargs := make([]any, 0, n*outs)
	for _, p := range parts {
		for _, t := range p {
			cargs = append(cargs, t)
		}
	}
	return cat.Call(cargs...)
}

// clusterExec returns the executable that clusters one layer's keys ([numKVHeads, capacity, headDim],
// the first `clustered` rows) into k clusters, and with k1 > 0 their centroids into k1 coarse clusters
// (a hierarchical index scoring `slots` fine centroids per step). Outputs: centroids (bfloat16 values, in
// centroidDType), counts, labels, and the cluster order's starts and order (squeeze.ClusterOrder), packed
// as unpackIndex reads them.
func (r *Runner) clusterExec(k, k1, slots, iters int) (*graph.Exec, error) {
	return r.clusterExecHeads(k, k1, slots, iters, r.cfg.NumKeyValueHeads)
}

// clusterExecHeads is clusterExec for hb KV heads per call (headBatch): with fewer than all, the inputs end
// with the first head (int32; callHeadBatched).
func (r *Runner) clusterExecHeads(k, k1, slots, iters, hb int) (*graph.Exec, error) {
	key := fmt.Sprintf("cluster/%d/%d/%d/%d/heads=%d", k, k1, slots, iters, hb)
	cdt := r.centroidDType() // the centroids' output dtype: their bfloat16 values convert to it exactly
	return r.namedExec(key, func() (*graph.Exec, error) {
		e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
			in = headSlice(in, hb)
			keys, clustered := in[0], in[1]
			if k1 == 0 {
				c, labels, counts := squeeze.KMeansMasked(keys, clustered, k, iters)
				order, starts := squeeze.ClusterOrder(labels, counts, clustered)
				return []*Node{ConvertDType(roundBF16(c), cdt), counts, labels, starts, order}
			}
			hi := squeeze.KMeansHierarchical(keys, clustered, k, k1, iters)
			order, starts := squeeze.ClusterOrder(hi.Labels, hi.Counts, clustered)
			h := keys.Shape().Dimensions[0]
			c := ConvertDType(Concatenate([]*Node{roundBF16(hi.Centroids), roundBF16(hi.CoarseCentroids)}, 1), cdt)
			counts := Concatenate([]*Node{hi.Counts, hi.CoarseCounts, ConvertDType(hi.Children, dtypes.Float32)}, 1)
			starts = Concatenate([]*Node{starts, Zeros(keys.Graph(), shapes.Make(dtypes.Int32, h, slots))}, 1)
			return []*Node{c, counts, hi.Labels, starts, order}
		})
		if err != nil {
			return nil, err
		}
		return e.WithName(key).SetMaxCache(maxCompiled), nil
	})
}

// centroidDType is the dtype of the squeeze index's centroid tensors: bfloat16 for a bfloat16 model (they
// are bfloat16 values, see roundBF16, so nothing is lost, and every lookup reads half the bytes), float32
// otherwise.
func (r *Runner) centroidDType() dtypes.DType {
	if r.DType() == dtypes.BFloat16 {
		return dtypes.BFloat16
	}
	return dtypes.Float32
}

// roundBF16 rounds float32 values to the nearest bfloat16 (ties to even; the centroids' storage precision),
// kept as float32. It works on the bits: XLA may fold a float32→bfloat16→float32 conversion pair away
// (excess precision allowed), and then the centroids were not the stored ones.
func roundBF16(x *Node) *Node {
	u32 := dtypes.Uint32
	b := Bitcast(ConvertDType(x, dtypes.Float32), u32)
	lsb := ModScalar(DivScalar(b, 1<<16), 2) // the lowest bit kept
	r := Add(b, AddScalar(lsb, 0x7fff))
	return Bitcast(MulScalar(DivScalar(r, 1<<16), 1<<16), dtypes.Float32)
}

// clusterOrderExec returns the executable that sorts every layer's keys by cluster (squeeze.ClusterOrder)
// for an index loaded from storage. Inputs: per layer labels [numKVHeads, capacity] int32, then per layer
// counts [numKVHeads, K(+2·K1)] float32 (packed: the first k are the fine clusters'), then the number of
// clustered keys (int32). Outputs: per layer starts (followed by `slots` zeros for a hierarchical index,
// see unpackIndex) and order.
func (r *Runner) clusterOrderExec(k, slots int) (*graph.Exec, error) {
	key := fmt.Sprintf("cluster_order/%d/%d", k, slots)
	return r.namedExec(key, func() (*graph.Exec, error) {
		L := r.cfg.NumHiddenLayers
		e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
			labels, counts, clustered := in[:L], in[L:2*L], in[2*L]
			var out []*Node
			for l := range L {
				order, starts := squeeze.ClusterOrder(labels[l], Slice(counts[l], AxisRange(), AxisRange(0, k)), clustered)
				if slots > 0 {
					h := starts.Shape().Dimensions[0]
					starts = Concatenate([]*Node{starts, Zeros(g, shapes.Make(dtypes.Int32, h, slots))}, 1)
				}
				out = append(out, starts, order)
			}
			return out
		})
		if err != nil {
			return nil, err
		}
		return e.WithName(key).SetMaxCache(maxCompiled), nil
	})
}

// clusterMeans computes the index's cluster mean values (squeeze.ClusterMeans) from the prefix's values,
// one layer per call, with opts.Remainder; nothing otherwise.
func (p *Prefix) clusterMeans(idx *squeezeIndex) error {
	if !idx.opts.Remainder {
		return nil
	}
	hb := headBatch(p.r.cfg.NumKeyValueHeads, idx.capacity, idx.k)
	hier := idx.k1 > 0
	exec, err := p.r.namedExec(fmt.Sprintf("cluster_means/%d/heads=%d/hier=%v", idx.k, hb, hier), func() (*graph.Exec, error) {
		e, err := graph.NewExec(p.r.backend, func(g *Graph, in []*Node) []*Node {
			in = headSlice(in, hb)
			if !hier {
				return []*Node{squeeze.ClusterMeans(in[0], in[1], in[2], in[3])}
			}
			// A hierarchical index's counts are packed (fine, coarse, children: unpackIndex): the fine ones.
			counts := Slice(in[2], AxisRange(), AxisRange(0, idx.k))
			means := squeeze.ClusterMeans(in[0], in[1], counts, in[3])
			return []*Node{means, squeeze.HierarchicalMeanSums(means, counts)}
		})
		if err != nil {
			return nil, err
		}
		return e.WithName("cluster_means").SetMaxCache(maxCompiled), nil
	})
	if err != nil {
		return err
	}
	for l := range idx.labels {
		out, err := p.r.callHeadBatched(exec, hb, []*tensors.Tensor{p.kv.v[l], idx.labels[l], idx.counts[l]}, int32(idx.clustered))
		if err != nil {
			return fmt.Errorf("llama: cluster means of layer %d: %w", l, err)
		}
		idx.means = append(idx.means, out[0])
		if hier {
			idx.meanSums = append(idx.meanSums, out[1])
		}
	}
	return nil
}

// setClusterOrder computes the index's starts and order from its labels and counts on the device.
func (r *Runner) setClusterOrder(idx *squeezeIndex) error {
	slots := 0 // a flat index's starts are not followed by slots
	if idx.k1 > 0 {
		slots = idx.slots
	}
	exec, err := r.clusterOrderExec(idx.k, slots)
	if err != nil {
		return err
	}
	args := make([]any, 0, 2*len(idx.labels)+1)
	for _, t := range idx.labels {
		args = append(args, t)
	}
	for _, t := range idx.counts {
		args = append(args, t)
	}
	args = append(args, int32(idx.clustered))
	out, err := exec.Call(args...)
	if err != nil {
		return fmt.Errorf("llama: sorting the squeeze index by cluster: %w", err)
	}
	for l := range len(idx.labels) {
		idx.starts = append(idx.starts, out[2*l])
		idx.order = append(idx.order, out[2*l+1])
	}
	return nil
}

// stepExecSqueezed returns the compiled step for sequences over a squeezed prefix. A flat and a
// hierarchical index share it when their inputs per layer are the same (their shapes differ: unpackIndex,
// so each compiles its own); the remainder adds the means, and a hierarchical index's mean sums too.
func (r *Runner) stepExecSqueezed(sq *squeezeIndex, allLogits, deviceToken, large, freshDyn bool) (*graph.Exec, error) {
	key := fmt.Sprintf("step/%s/%v/calibrated=%v/mass=%v/inputs=%d/device_token=%v/large=%v/fresh_dyn=%v", sq.listKey(), allLogits,
		sq.calibrated(), sq.opts.Mass, sq.inputsPerLayer(), deviceToken, large, freshDyn)
	return r.namedExec(key, func() (*graph.Exec, error) {
		return r.newExec(stepKind{allLogits: allLogits, hasCtx: true, deviceToken: deviceToken, large: large, freshDyn: freshDyn}, sq)
	})
}
