package llama

import (
	"fmt"
	"math"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/squeeze"
)

// Threshold calibration (calibrated-threshold mode), as the reference: the calibration queries are the
// fixed context's own last observation-window tokens' post-RoPE queries, per layer. Prefill does not keep
// queries, so the window tokens are run once more through the model, attending to the context's clustered
// rows [0, clustered) and causally to themselves: exactly the queries of a normal forward. Every cluster
// is scored by its estimated probability averaged over the window queries (per KV head over its query
// heads, as online), and one global threshold over all layers and heads is the quantile of the keys' scores
// (clusters weighted by their sizes) that drops the target sparsity. A hierarchical index scores the
// clusters with its own lookup (squeeze.HierarchicalClusterScores: the window's queries prune the coarse
// level as one online step's would), and the fine clusters it does not score count as dropped.

// calibrate sets idx.threshold and idx.calibratedKept for idx.opts.Sparsity from the window's queries.
func (p *Prefix) calibrate(idx *squeezeIndex) error {
	if idx.opts.Mass {
		return p.calibrateMass(idx)
	}
	scores, counts, _, err := p.calibrationScores(idx, false)
	if err != nil {
		return err
	}
	thr, kept, err := squeeze.CalibrateClusters(scores, counts, idx.opts.Sparsity)
	if err != nil {
		return fmt.Errorf("llama: calibration: %w", err)
	}
	idx.threshold, idx.calibratedKept = thr, kept
	return nil
}

// calibrationScores runs the observation window through the model and returns, for every layer, KV
// head and cluster (flattened in that order), the cluster's mean estimated probability over the window's
// queries and its number of keys. With withLogits it also returns the window's logits [window × vocab]
// (for tests: they must equal a normal forward's).
func (p *Prefix) calibrationScores(idx *squeezeIndex, withLogits bool) (scores, counts, logits []float32, err error) {
	r := p.r
	L := r.cfg.NumHiddenLayers
	exec, err := r.calibrateExec(withLogits)
	if err != nil {
		return nil, nil, nil, err
	}
	out, err := p.calibrationCall(exec, idx)
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		for _, t := range out {
			t.FinalizeAll()
		}
	}()
	for l := range L {
		s, err := tensors.CopyFlatData[float32](out[l])
		if err != nil {
			return nil, nil, nil, err
		}
		n, err := idx.fineCounts(l)
		if err != nil {
			return nil, nil, nil, err
		}
		scores, counts = append(scores, s...), append(counts, n...)
	}
	if withLogits {
		if logits, err = tensors.CopyFlatData[float32](out[L]); err != nil {
			return nil, nil, nil, err
		}
	}
	return scores, counts, logits, nil
}

// calibrationCall runs a calibration executable (calibrateExecMode) over the prefix's window.
func (p *Prefix) calibrationCall(exec *graph.Exec, idx *squeezeIndex) ([]*tensors.Tensor, error) {
	r := p.r
	rows := p.cachedRows()
	packed := make([]int32, 0, idx.window+1)
	for _, t := range p.tokens[idx.clustered:rows] {
		packed = append(packed, int32(t))
	}
	packed = append(packed, int32(idx.clustered))
	invFreq, err := r.invFreq(rows - 1)
	if err != nil {
		return nil, err
	}
	args := make([]any, 0, len(r.weights.Tensors)+2+5*r.cfg.NumHiddenLayers)
	for _, t := range r.weights.Tensors {
		args = append(args, t)
	}
	args = append(args, invFreq, packed)
	for _, ts := range [][]*tensors.Tensor{p.kv.k, p.kv.v, idx.centroids, idx.counts, idx.starts} {
		for _, t := range ts {
			args = append(args, t)
		}
	}
	out, err := exec.Call(args...)
	if err != nil {
		return nil, fmt.Errorf("llama: calibration forward: %w", err)
	}
	return out, nil
}

// calibrateExec returns the executable of the calibration forward. Inputs: the weights, the RoPE
// inverse frequencies, one int32 vector [window tokens..., clustered], then per layer the context's keys
// and values [numKVHeads, ctxCap, headDim] and the index's centroids (centroidDType), counts and starts
// (packed for a hierarchical index: see unpackIndex). Outputs: per layer the fine clusters' scores
// [numKVHeads, K] float32 (-Inf: not scored by a hierarchical index) (and the window's logits
// [window, vocab] with withLogits).
func (r *Runner) calibrateExec(withLogits bool) (*graph.Exec, error) {
	return r.calibrateExecMode(withLogits, false)
}

// calibrateExecMode is calibrateExec; with mass, each layer's output is instead the attention-mass
// mode's curve [2, len(massTargets)] float32: for every target, the keys kept summed over the window's
// tokens and KV heads, and the most kept by one token in one head (squeeze.MassKeptCurve, each window
// token selecting alone, as a decode step does).
func (r *Runner) calibrateExecMode(withLogits, mass bool) (*graph.Exec, error) {
	key := fmt.Sprintf("calibrate/%v/mass=%v", withLogits, mass)
	return r.namedExec(key, func() (*graph.Exec, error) {
		c := r.cfg
		nw := len(r.weights.Tensors)
		L := c.NumHiddenLayers
		e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
			w := unpackWeights(c, in[:nw])
			invFreq, packed := in[nw], in[nw+1]
			rest := in[nw+2:]
			ctxK, ctxV, centroids, counts, starts := rest[:L], rest[L:2*L], rest[2*L:3*L], rest[3*L:4*L], rest[4*L:5*L]
			n := packed.Shape().Dimensions[0] - 1
			tokens := Slice(packed, AxisRange(0, n))               // [window]
			clustered := Reshape(Slice(packed, AxisRange(n, n+1))) // scalar: position of tokens[0]
			queries, x := windowForward(c, w, tokens, clustered, invFreq, ctxK, ctxV)
			scale := 1 / math.Sqrt(float64(c.HeadDim))
			var out []*Node
			for l, q := range queries {
				ix := unpackIndex(squeeze.LayerIndex{Centroids: lookupCentroids(centroids[l], q.DType()), Counts: counts[l], Starts: starts[l]})
				if mass {
					out = append(out, massCurve(c, groupQueries(c, q), ix, scale))
					continue
				}
				if ix.CoarseCentroids != nil {
					out = append(out, squeeze.HierarchicalClusterScores(groupQueries(c, q), ix, scale)) // [numKVHeads, K]
				} else {
					out = append(out, squeeze.ClusterScores(groupQueries(c, q), ix.Centroids, ix.Counts, scale)) // [numKVHeads, K]
				}
			}
			if withLogits {
				x = rmsNorm(x, w.norm, c.RMSNormEps)
				out = append(out, ConvertDType(einsum("nh,vh->nv", x, w.lmHead), dtypes.Float32)) // [window, vocab]
			}
			return out
		})
		if err != nil {
			return nil, err
		}
		return e.WithName(key).SetMaxCache(maxCompiled), nil
	})
}

// fineCounts returns layer l's fine cluster counts [numKVHeads × K] (the first K of each head's packed
// counts for a hierarchical index).
func (sq *squeezeIndex) fineCounts(l int) ([]float32, error) {
	n, err := tensors.CopyFlatData[float32](sq.counts[l])
	if err != nil || sq.k1 == 0 {
		return n, err
	}
	width := sq.k + 2*sq.k1
	out := make([]float32, 0, len(n)/width*sq.k)
	for h := 0; h < len(n); h += width {
		out = append(out, n[h:h+sq.k]...)
	}
	return out, nil
}

// groupQueries folds the query heads sharing a KV head into rows of it, as squeezedAttention does:
// q [n, numHeads, headDim] → [numKVHeads, n*group, headDim].
func groupQueries(c *Config, q *Node) *Node {
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	qg := TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3)
	return Reshape(qg, kvh, n*group, hd)
}

// windowForward recomputes the window tokens (at positions start, start+1, ...) through every layer,
// attending to the context rows [0, start) and causally to themselves, and returns each layer's post-RoPE
// queries [n, numHeads, headDim] and the last hidden state [n, hidden] (before the final norm).
func windowForward(c *Config, w modelNodes, tokens, start, invFreq *Node, ctxK, ctxV []*Node) (queries []*Node, x *Node) {
	g := tokens.Graph()
	dtype := w.embed.DType()
	n := tokens.Shape().Dimensions[0]
	ctxCap := ctxK[0].Shape().Dimensions[1]

	positions := Add(Iota(g, shapes.Make(dtypes.Int32, n), 0), start) // [n]
	cos, sin := ropeTables(positions, invFreq, dtype)                 // [n, 1, headDim]
	ctxMask := LessThan(Iota(g, shapes.Make(dtypes.Int32, n, ctxCap), 1),
		BroadcastToDims(start, n, ctxCap)) // [n, ctxCap]: the clustered keys
	causal := LessOrEqual(Iota(g, shapes.Make(dtypes.Int32, n, n), 1),
		Iota(g, shapes.Make(dtypes.Int32, n, n), 0)) // [n, n]

	x = Gather(w.embed, ExpandAxes(tokens, -1)) // [n, hidden]
	for l, lw := range w.layers {
		h := rmsNorm(x, lw.inNorm, c.RMSNormEps)
		q, k, v := projectQKV(c, lw, h) // [n, heads, headDim]
		q, k = applyRoPE(q, cos, sin), applyRoPE(k, cos, sin)
		queries = append(queries, q)
		attn := attention(c, q, ctxK[l], ctxV[l], Transpose(k, 0, 1), Transpose(v, 0, 1), ctxMask, causal) // [n, numHeads*headDim]
		x = Add(x, linear(attn, lw.o, lw.oBias))
		x = Add(x, mlp(c, lw, rmsNorm(x, lw.postNorm, c.RMSNormEps)))
	}
	return queries, x
}

// massTargets are the attention-mass targets the calibration tries: 1 - ε for ε log-spaced from 1 down to
// 1e-6 (256 of them, each ε 5.6% below the previous one), then 1.
func massTargets() []float32 {
	const n = 256
	t := make([]float32, 0, n+1)
	for j := range n {
		t = append(t, float32(1-math.Pow(10, -6*float64(j)/(n-1))))
	}
	return append(t, 1)
}

// massCurve is one layer's attention-mass calibration output (see calibrateExecMode) for the window's
// grouped queries qg [numKVHeads, n*group, headDim] (token-major, as groupQueries lays them out).
func massCurve(c *Config, qg *Node, ix squeeze.LayerIndex, scale float64) *Node {
	g := qg.Graph()
	h, m := qg.Shape().Dimensions[0], qg.Shape().Dimensions[1]
	group := c.GroupSize()
	n, k := m/group, ix.Counts.Shape().Dimensions[1]
	// One token's selection scores its query heads together (the mean of their estimated probabilities).
	p := Exp(squeeze.LogClusterProb(qg, ix.Centroids, ix.Counts, scale))                                 // [H, n*group, K]
	p = ReduceMean(Reshape(p, h, n, group, k), 2)                                                        // [H, n, K]
	counts := BroadcastToDims(Reshape(ix.Counts, h, 1, k), h, n, k)                                      // [H, n, K]
	curve := squeeze.MassKeptCurve(Reshape(p, h*n, k), Reshape(counts, h*n, k), Const(g, massTargets())) // [H*n, T]
	f := ConvertDType(curve, dtypes.Float32)
	return Stack([]*Node{ReduceSum(f, 0), ReduceMax(f, 0)}, 0) // [2, T]
}

// calibrateMass sets an attention-mass index's target (idx.threshold), the fraction of the clustered keys
// the window's tokens keep with it on average (idx.calibratedKept), and each layer's static list size:
// the most keys one token kept in one head of the layer, rounded up to 64 × a power of two (at most the
// capacity), plus the window's slots. A later step that passes more keys keeps the best that fit.
func (p *Prefix) calibrateMass(idx *squeezeIndex) error {
	r := p.r
	L := r.cfg.NumHiddenLayers
	exec, err := r.calibrateExecMode(false, true)
	if err != nil {
		return err
	}
	out, err := p.calibrationCall(exec, idx)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range out {
			t.FinalizeAll()
		}
	}()
	targets := massTargets()
	nt := len(targets)
	sums := make([]float64, nt)
	maxes := make([][]float32, L)
	for l := range L {
		v, err := tensors.CopyFlatData[float32](out[l])
		if err != nil {
			return err
		}
		for j := range nt {
			sums[j] += float64(v[j])
		}
		maxes[l] = v[nt:]
	}
	rows := float64(L * r.cfg.NumKeyValueHeads * idx.window * idx.clustered) // keys over every token's selection
	want, best := 1-idx.opts.Sparsity, -1
	for j := range nt {
		if best < 0 || math.Abs(sums[j]/rows-want) < math.Abs(sums[best]/rows-want) {
			best = j
		}
	}
	idx.threshold, idx.calibratedKept = targets[best], sums[best]/rows
	// One list size for every layer, the busiest layer's: with a size per layer, nearly every context's
	// combination of sizes was new and compiled its own step executables on XLA (about 10 s each; session 7's
	// GPU runs of this mode stopped at 75 and 46 of 150 items). The other layers' lists get free slots.
	most := 0
	for l := range L {
		most = max(most, int(maxes[l][best]))
	}
	size := massListSize(most, idx.capacity, idx.opts.Window)
	idx.layerKept = make([]int, L)
	for l := range L {
		idx.layerKept[l] = size
	}
	return nil
}

// massListSize is a layer's kept-list size in the attention-mass mode: room for `most` clustered keys,
// rounded up to 64 × a power of two but not beyond the KV capacity (bucketed by 64), plus the window's
// slots. The sizes come from a small set for all contexts of one capacity bucket (not from each context's
// own length), so that on XLA the squeezed steps of different contexts share their compilations.
func massListSize(most, capacity, window int) int {
	slots := 64
	for slots < most {
		slots *= 2
	}
	return min(slots, bucket64(capacity)) + bucket64(window)
}
