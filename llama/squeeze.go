package llama

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// SqueezeOptions configure Squeezed Attention over a prefix's fixed context.
type SqueezeOptions struct {
	// Budget is the fraction of the clustered fixed-context keys kept for each user input and each decode
	// step (fixed-budget mode), in (0, 1].
	Budget float64
	// Centroids is the number of centroids as a fraction of the clustered keys (default 0.05).
	Centroids float64
	// Window is the observation window: the context's last tokens, never clustered and always attended
	// (default 100, at most a tenth of the context).
	Window int
	// Iterations of k-means (default 10).
	Iterations int
}

// squeezeIndex is a prefix's clustering: per layer and KV head, centroids of the clustered keys.
type squeezeIndex struct {
	opts      SqueezeOptions
	clustered int // keys [0, clustered) are clustered; [clustered, cachedRows) are the window
	window    int
	budget    int // kept clustered keys per head and step
	maxKept   int // static size of the kept-key lists (budget + window, bucketed by capacity)
	k         int
	centroids []*tensors.Tensor // per layer [numKVHeads, K, headDim] float32
	counts    []*tensors.Tensor // per layer [numKVHeads, K] float32
	labels    []*tensors.Tensor // per layer [numKVHeads, clustered] int32
	// ClusterTime is how long the clustering took.
	clusterTime time.Duration
}

// squeezeLayer are one layer's index nodes inside a step graph.
type squeezeLayer struct {
	centroids, counts, labels *Node // [numKVHeads, K, headDim], [numKVHeads, K], [numKVHeads, ctxCap]
	clustered, window, budget *Node // scalar int32: they vary per prefix without recompiling
	maxKept                   int
}

type squeezeInputs struct {
	layers []squeezeLayer
}

// SqueezeInfo describes a prefix's Squeezed Attention index.
type SqueezeInfo struct {
	Clustered, Window, Budget, Centroids int
	// KeptFraction is the fraction of the fixed context's keys read per step, centroids counted as keys:
	// (budget + window + centroids) / context keys.
	KeptFraction float64
	ClusterTime  time.Duration
}

// Squeeze clusters the prefix's keys so that sequences started from it attend only to the keys that
// matter. It replaces any previous index. Prefixes shorter than a few hundred tokens gain nothing and are
// left dense (an error says so).
func (p *Prefix) Squeeze(ctx context.Context, opts SqueezeOptions) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("llama: squeeze: %v", r)
		}
	}()
	if p.r.cfg.SlidingWindow > 0 {
		return fmt.Errorf("llama: %w: Squeezed Attention with a sliding-window model", ErrUnsupported)
	}
	if opts.Budget <= 0 || opts.Budget > 1 || math.IsNaN(opts.Budget) {
		return fmt.Errorf("llama: squeeze budget %g outside (0, 1]", opts.Budget)
	}
	if opts.Centroids == 0 {
		opts.Centroids = 0.05
	}
	if opts.Centroids <= 0 || opts.Centroids > 0.5 {
		return fmt.Errorf("llama: squeeze centroids fraction %g outside (0, 0.5]", opts.Centroids)
	}
	if opts.Iterations == 0 {
		opts.Iterations = 10
	}
	rows := p.cachedRows()
	window := opts.Window
	if window == 0 {
		window = 100
	}
	window = min(window, rows/10)
	clustered := rows - window
	k := int(math.Round(opts.Centroids * float64(clustered)))
	if clustered < 64 || k < 2 {
		return fmt.Errorf("llama: a fixed context of %d tokens is too short to squeeze", len(p.tokens))
	}
	budget := max(1, int(math.Ceil(opts.Budget*float64(clustered))))
	// Static shapes follow the context capacity (a bucket), so prefixes of different lengths share
	// executables: K and the kept-list size are fractions of the capacity, the actual counts are inputs.
	capacity := p.kv.capacity()
	k = max(2, int(math.Round(opts.Centroids*float64(capacity))))
	maxWindow := opts.Window
	if maxWindow == 0 {
		maxWindow = 100
	}
	maxKept := bucket64(int(math.Ceil(opts.Budget*float64(capacity)))) + bucket64(maxWindow)
	start := time.Now()
	L := p.r.cfg.NumHiddenLayers
	exec, err := p.r.clusterExec(k, opts.Iterations)
	if err != nil {
		return err
	}
	args := make([]any, 0, L+1)
	for _, t := range p.kv.k {
		args = append(args, t)
	}
	args = append(args, int32(clustered))
	if err := ctx.Err(); err != nil {
		return err
	}
	out, err := exec.Call(args...)
	if err != nil {
		return fmt.Errorf("llama: clustering: %w", err)
	}
	idx := &squeezeIndex{opts: opts, clustered: clustered, window: window, budget: budget, k: k, maxKept: maxKept}
	for l := range L {
		idx.centroids = append(idx.centroids, out[3*l])
		idx.counts = append(idx.counts, out[3*l+1])
		idx.labels = append(idx.labels, out[3*l+2])
	}
	// Wait for the device so the clustering time is real.
	if _, err := tensors.CopyFlatData[float32](idx.counts[0]); err != nil {
		return err
	}
	idx.clusterTime = time.Since(start)
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
	return SqueezeInfo{Clustered: sq.clustered, Window: sq.window, Budget: sq.budget, Centroids: sq.k,
		KeptFraction: float64(sq.budget+sq.window+sq.k) / float64(sq.clustered+sq.window),
		ClusterTime:  sq.clusterTime}, true
}

func (p *Prefix) dropSqueeze() {
	if p.sq == nil {
		return
	}
	for _, ts := range [][]*tensors.Tensor{p.sq.centroids, p.sq.counts, p.sq.labels} {
		for _, t := range ts {
			t.FinalizeAll()
		}
	}
	p.sq = nil
}

// squeezedAttention is attention over the fixed context read sparsely (the keys of the clusters that
// matter for this step's queries, plus the observation window), merged by log-sum-exp with dense causal
// attention over the dynamic segment. One selection per KV head for the step's whole input (all its
// tokens and all the query heads of the group).
func squeezedAttention(c *Config, q, ctxK, ctxV, dynK, dynV, dynMask *Node, sq *squeezeLayer) *Node {
	g := q.Graph()
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	ctxCap, dynCap := ctxK.Shape().Dimensions[1], dynK.Shape().Dimensions[1]
	scale := 1 / math.Sqrt(float64(hd))

	qg := TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3)
	qg = Reshape(qg, kvh, n*group, hd) // [numKVHeads, n*group, headDim]

	// Selection: the clusters' estimated probabilities → the budget's best keys, plus the window.
	scores := squeeze.ClusterScores(qg, sq.centroids, sq.counts, scale) // [numKVHeads, K]
	pos := Iota(g, shapes.Make(dtypes.Int32, kvh, ctxCap), 1)
	clustered := LessThan(pos, BroadcastToDims(sq.clustered, kvh, ctxCap)) // rows [0, clustered)
	end := BroadcastToDims(Add(sq.clustered, sq.window), kvh, ctxCap)
	windowRows := And(Not(clustered), LessThan(pos, end)) // the observation window: always attended
	keyScores := Where(clustered, squeeze.KeyScores(scores, sq.labels), ZerosLike(ConvertDType(pos, dtypes.Float32)))
	keep := And(squeeze.BudgetMaskN(keyScores, sq.budget), clustered)
	mask := Or(keep, windowRows) // [numKVHeads, ctxCap]
	idx, valid, _ := squeeze.Compact(mask, sq.maxKept)

	sparse := squeeze.SparseAttention(qg, ctxK, ctxV, idx, valid, scale)
	dm := Reshape(BroadcastToDims(Reshape(dynMask, n, 1, dynCap), n, group, dynCap), 1, n*group, dynCap)
	dense := squeeze.DenseAttention(qg, dynK, dynV, dm, scale)
	out := squeeze.Merge(sparse, dense).Out // [numKVHeads, n*group, headDim] float32
	out = TransposeAllAxes(Reshape(ConvertDType(out, q.DType()), kvh, n, group, hd), 1, 0, 2, 3)
	return Reshape(out, n, c.NumAttentionHeads*hd)
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

// clusterExec returns the executable that clusters every layer's keys ([numKVHeads, capacity, headDim],
// the first `clustered` rows) into k clusters.
func (r *Runner) clusterExec(k, iters int) (*graph.Exec, error) {
	key := fmt.Sprintf("cluster/%d/%d", k, iters)
	return r.namedExec(key, func() (*graph.Exec, error) {
		e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
			keys, clustered := in[:len(in)-1], in[len(in)-1]
			var out []*Node
			for _, kl := range keys {
				c, labels, counts := squeeze.KMeansMasked(kl, clustered, k, iters)
				out = append(out, c, counts, labels)
			}
			return out
		})
		if err != nil {
			return nil, err
		}
		return e.WithName(key).SetMaxCache(maxCompiled), nil
	})
}

// stepExecSqueezed returns the compiled step for sequences over a squeezed prefix.
func (r *Runner) stepExecSqueezed(sq *squeezeIndex, allLogits bool) (*graph.Exec, error) {
	return r.namedExec(fmt.Sprintf("step/%d/%v", sq.maxKept, allLogits), func() (*graph.Exec, error) {
		return r.newStepExecWith(allLogits, sq)
	})
}
