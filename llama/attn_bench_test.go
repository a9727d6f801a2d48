package llama

// The attention benchmark of issue 4's speed criteria: the engine's dense attention against Squeezed
// Attention (lookup + selection + sparse attention + merge) at a fixed 10% budget, for LLaMA-2-7B
// (32 × 128 query and KV heads) and LLaMA-3-8B (32 query / 8 KV heads) shapes, bfloat16, 32K and 128K
// fixed contexts, a decode step (1 token) and a 512-token user input; and the clustering of a 32K context.
//
// It runs only when asked, from the repository root (on the GPU machine after sourcing
// scripts/gpu/xla-env.sh):
//
//	GOEXPERIMENT=simd CGO_ENABLED=1 go test -c -trimpath -ldflags="-s -w" -o bin/llama.test ./llama
//	bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 9m -attnbench gpu -attnbench.out report.md
//
// (-attnbench tiny runs CPU-sized shapes; TestAttentionBenchGraphs checks the graphs on the CPU.) Every executable chains `layers` layers (default 32, a whole
// model): layer l's query is the first query plus layer l-1's output, so no two layers compute the same
// thing and the ~100 µs cost of an executable call is paid once per model, not per layer. The fixed
// context's K/V of each layer is a device buffer of random bfloat16 values; when a model's 32 layers do
// not fit the -attnbench.kvgb budget (LLaMA-2-7B at 128K: 2.1 GB per layer) the layers reuse a few
// buffers cyclically (reported; a buffer is far larger than the GPU's L2 cache, so reuse saves no reads).
//
// The squeeze index is synthetic, made on the device: uniformly random labels (each cluster's keys
// scattered over the whole context, the worst case for the gathers), counts that match them, random
// centroids. Timings depend only on the shapes, on the kept-key count (exactly 10% of the clustered keys
// plus the 100-row window in budget mode) and on where the kept keys lie. The "sorted" variants treat the
// same buffers as if stored sorted by cluster (squeeze.PermuteRows), so each kept cluster is a contiguous
// run of rows.

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/squeeze"
)

var (
	abMode       = flag.String("attnbench", "", `run TestAttentionBench: "gpu" (7B and 8B shapes, 32K and 128K contexts) or "tiny" (CPU-sized); empty: skip`)
	abShapes     = flag.String("attnbench.shapes", "", "comma list of model shapes: 7b, 8b, tiny (default: from -attnbench)")
	abCtx        = flag.String("attnbench.ctx", "", "comma list of fixed-context lengths, multiples of 64 (default: from -attnbench)")
	abPhases     = flag.String("attnbench.phases", "decode,input", "comma list of phases: decode (1 token), input (a user input of -attnbench.input tokens)")
	abInput      = flag.Int("attnbench.input", 0, "user-input tokens, the dynamic segment (default 512; tiny: 64)")
	abLayers     = flag.Int("attnbench.layers", 0, "layers chained in one executable (default 32; tiny: 4)")
	abReps       = flag.Int("attnbench.reps", 0, "timed calls of each executable, the median reported (default 5; tiny: 2)")
	abKVGB       = flag.Float64("attnbench.kvgb", 24, "GB of distinct fixed-context K/V buffers at most; further layers reuse them cyclically")
	abCluster    = flag.Bool("attnbench.cluster", true, "also time clustering (32 layers of a 32K context, 7B shape; tiny: every tiny context)")
	abCheck      = flag.Bool("attnbench.check", true, "first check every variant against dense attention with every key kept (small context)")
	abParallel   = flag.Int("attnbench.parallel", 4, "executables compiled concurrently")
	abVariants   = flag.String("attnbench.variants", "", "comma list of variants to run (default all; see abVariantList)")
	abSplits     = flag.Int("attnbench.splits", 0, "the paged kernel's most programs per KV head (squeeze.SetPagedSplits; 0: the engine's)")
	abInterleave = flag.Bool("attnbench.interleave", false, "time the variants' repetitions interleaved (A B C A B C …) "+
		"instead of one variant's after another's, so that they share the process's and the card's drifts")
	abBatch = flag.Int("attnbench.batch", 1, "calls issued back to back per timed repetition, the time divided by them: "+
		"above 1 the host's per-call overhead (PJRT dispatch, the output's copy) is paid once a repetition")
	abSlope = flag.Bool("attnbench.slope", true, "per layer from two executables of L and 2L chained layers, (call(2L) − call(L)) / L; "+
		"false: (call − empty call) / L, the figures of sessions 10-15, which subtract host time that the device's work hides (see slopeRow)")
	abGraphs      = flag.Bool("attnbench.graphs", true, "compile the decode executables for command buffers (CUDA graphs on XLA), as the engine compiles its decode steps")
	abInputGraphs = flag.Bool("attnbench.inputgraphs", false, "also compile the user-input executables for command buffers "+
		"(the engine does so for inputs of at most SQLLM_GRAPH_ROWS rows, default 128)")
	abOut      = flag.String("attnbench.out", "", "also write the Markdown report to this file")
	abSelCheck = flag.Bool("attnbench.selcheck", false, "check layer 0's selection, XLA's and the selection kernels', against the exact budget selection computed on the host from the device's cluster scores (each phase)")
	abBackend  = flag.String("attnbench.backend", "auto", "backend: auto, xla or go")
)

// Squeeze settings of issue 4's speed criteria.
const (
	abBudget    = 0.10 // kept fraction of the clustered fixed-context keys
	abCentroids = 0.05 // centroids per clustered key
	abWindow    = 100  // observation window
	abIters     = 10   // k-means iterations (clustering benchmark)
)

// abShape is a model's attention geometry.
type abShape struct {
	name                     string
	heads, kvHeads, headDim  int
	defaultCtx               []int
	defaultInput, defaultLay int
}

var abShapeTable = map[string]abShape{
	"7b":   {"LLaMA-2-7B", 32, 32, 128, []int{32768, 131072}, 512, 32},
	"8b":   {"LLaMA-3-8B", 32, 8, 128, []int{32768, 131072}, 512, 32},
	"tiny": {"tiny", 4, 2, 16, []int{1024, 2048}, 64, 4},
}

func (s abShape) config(layers int) *Config {
	return &Config{ModelType: "llama", NumAttentionHeads: s.heads, NumKeyValueHeads: s.kvHeads, HeadDim: s.headDim,
		HiddenSize: s.heads * s.headDim, NumHiddenLayers: layers}
}

// abVariant is one executable: every layer's attention computed one way.
type abVariant struct {
	name, about string
	phases      string // "decode", "input" or "" (both)
	lookupOnly  bool
	stage       bool // a stage of the squeezed step alone (not an attention: no check against dense)
	sorted      bool // the index of the cluster-sorted layout
}

// abVariantList: the engine's dense attention, the engine's current squeezed attention, the proposed
// cluster-level path (squeeze.Attend) in both layouts, and their lookups alone.
var abVariantList = []abVariant{
	{name: "empty", about: "call overhead: same inputs, no attention"},
	{name: "dense", about: "engine dense attention (llama.attention, the decomposed graph)"},
	{name: "dense-fused", phases: "input", about: "engine dense attention of a prefill step (llama.fusedAttention: cuDNN flash; what the engine runs for ≥64 tokens)"},
	{name: "sq-engine", about: "engine squeezed attention (llama.squeezedAttention: squeeze.Attend, cluster-level selection, centroids in the model's dtype as the engine keeps them, masked dense dyn part)"},
	{name: "sq-engine-paged", phases: "decode", about: "engine squeezed attention, the kept keys through the paged Triton kernel (squeeze.KernelPaged; SQLLM_SQUEEZE_PAGED=1 in the engine)"},
	{name: "sq-new", about: "proposed: squeeze.Attend (cluster-level SelectKeys, bf16 centroids; einsum decode / fused-flash input)"},
	{name: "sq-new-reduce", phases: "decode", about: "proposed, sparse part as fusable multiply-reduce (squeeze.KernelReduce)"},
	{name: "sq-sorted", sorted: true, about: "proposed, K/V stored sorted by cluster (kept clusters are contiguous runs)"},
	{name: "sq-sorted-reduce", phases: "decode", sorted: true, about: "proposed, sorted layout, multiply-reduce"},
	{name: "lookup-engine", lookupOnly: true, about: "lookup alone, the former engine selection (ClusterScores → KeyScores → BudgetMaskN → Compact)"},
	{name: "lookup-new", lookupOnly: true, about: "lookup alone, proposed (squeeze.Select: ClusterScores → SelectKeys)"},
	{name: "lookup-sorted", lookupOnly: true, sorted: true, about: "lookup alone, proposed, sorted layout"},
	{name: "sq-engine-paged-sort", phases: "decode", about: "sq-engine-paged with the boundary found by a sort (squeeze.SearchSort)"},
	{name: "sq-engine-paged-passes", phases: "decode", about: "sq-engine-paged with the boundary found in passes (squeeze.SearchPasses)"},
	{name: "sq-engine-sel", about: "sq-engine with the selection in the two selection Triton kernels (squeeze.SelectOn; the other sq-engine variants select with XLA's ops)"},
	{name: "sq-engine-paged-sel", phases: "decode", about: "sq-engine-paged with the selection kernels, whose list the paged kernel reads as it is; the dynamic segment in XLA's dense attention (squeeze.PagedSeg off)"},
	{name: "sq-engine-paged-sel-seg", phases: "decode", about: "sq-engine-paged-sel with the dynamic segment in the paged kernel's launch (squeeze.PagedSeg on; for up to squeeze.PagedSegAutoMaxQueries query rows a KV head on a GPU that passed the probes)"},
	{name: "sq-engine-paged-sel-seg-look", phases: "decode", about: "sq-engine-paged-sel-seg with the cluster scores and the boundary in the lookup kernel instead of XLA's softmax and kernel A (squeeze.LookupKernel on; the engine's default on a GPU that passed the probes)"},
	{name: "sq-engine-paged-sel-seg-look-sorted", phases: "decode", about: "sq-engine-paged-sel-seg-look over the same buffers read as if the fixed context's keys and values were stored sorted by cluster (each kept cluster a contiguous run of rows; the engine stores them in position order): what the sorted layout would gain in the paged kernel"},
	{name: "lookup-scores", lookupOnly: true, about: "lookup stage 1 alone: the cluster scores (squeeze.ClusterScores)"},
	{name: "lookup-lo", lookupOnly: true, about: "lookup stages 1-2: cluster scores and the budget's boundary (squeeze.Boundary, SearchAuto)"},
	{name: "lookup-lo-passes", lookupOnly: true, about: "lookup stages 1-2, the boundary in passes (SearchPasses)"},
	{name: "lookup-lo-sort", lookupOnly: true, about: "lookup stages 1-2, the boundary by a sort (SearchSort)"},
	{name: "lookup-passes", lookupOnly: true, about: "lookup-new with the boundary in passes (SearchPasses)"},
	{name: "lookup-sort", lookupOnly: true, about: "lookup-new with the boundary by a sort (SearchSort)"},
	{name: "lookup-sel", lookupOnly: true, about: "lookup alone with the selection kernels (squeeze.SelectRows, SelectOn): cluster scores, then the two kernels' list"},
	{name: "sq-engine-sel-sk", phases: "input", about: "sq-engine-sel with the cluster scores in the two cluster-score Triton kernels (squeeze.ScoresKernels SelectOn; the other variants score with XLA's ops): the engine's default for a user input on a GPU that passed the probes"},
	{name: "sq-engine-sel-sk-xdyn", phases: "input", about: "sq-engine-sel-sk with the input tokens' own part in XLA's masked dense graph, as the engine ran it before session 12 (every sq-engine variant now attends a fresh dynamic segment with the fused causal kernel, squeezeLayer.freshDyn)"},
	{name: "lookup-sel-sk", lookupOnly: true, phases: "input", about: "lookup-sel with the cluster scores in the cluster-score kernels"},
	{name: "part-paged", phases: "decode", stage: true, about: "stage alone: the paged kernel and its split merge over a fixed list of the budget's rows (every 9th row; no lookup, no input tokens)"},
	{name: "part-dyn", phases: "decode", stage: true, about: "stage alone: the decode token's attention over the input's tokens (squeeze.DenseAttention, as squeezedAttention's dynamic part)"},
	{name: "part-paged-dyn", phases: "decode", stage: true, about: "part-paged and part-dyn merged (squeeze.Merge): the squeezed decode step without its lookup"},
	{name: "part-kept", phases: "input", stage: true, about: "stage alone: the kept keys' gather and cuDNN attention (squeeze.SparseAttentionFused) over a fixed list of the budget's rows (every 9th row; no lookup, no input tokens)"},
	{name: "part-dyn-in", phases: "input", stage: true, about: "stage alone: the input tokens' causal attention over themselves through cuDNN (squeeze.CausalAttentionFused, squeezedAttention's part for a fresh dynamic segment)"},
	{name: "part-kept-dyn", phases: "input", stage: true, about: "part-kept and part-dyn-in merged (squeeze.Merge): the squeezed user-input step without its lookup"},
}

// abSearch is the boundary search a variant's name asks for.
func abSearch(name string) squeeze.Search {
	switch {
	case strings.HasSuffix(name, "-sort"):
		return squeeze.SearchSort
	case strings.HasSuffix(name, "-passes"):
		return squeeze.SearchPasses
	}
	return squeeze.SearchAuto
}

// abKernels is a variant's choice for one family of kernels: SelectOn where its name carries the family's tag as a
// dash-separated word, SelectOff otherwise. The tags: "sel", the selection kernels (else XLA's selection); "seg", the
// decode step's dynamic segment in the paged kernel's launch (else XLA's dense attention); "look", the lookup kernel
// (else XLA's scores and kernel A); "sk", the cluster-score kernels (else XLA's scores).
func abKernels(name, tag string) squeeze.SelectMode {
	if strings.HasSuffix(name, "-"+tag) || strings.Contains(name, "-"+tag+"-") {
		return squeeze.SelectOn
	}
	return squeeze.SelectOff
}

// abParams are one configuration's sizes.
type abParams struct {
	shape                     abShape
	ctx, input, layers, nbuf  int
	decode                    bool
	clustered, window, budget int
	k, maxKept                int
	dtype                     dtypes.DType
	keepAll                   bool // test: budget = every clustered key
	kernelDecode, kernelInput squeeze.Kernel
	variantsFilter            []string
}

func (p abParams) n() int { // query tokens
	if p.decode {
		return 1
	}
	return p.input
}

func (p abParams) phase() string {
	if p.decode {
		return "decode"
	}
	return fmt.Sprintf("input %d", p.input)
}

// geometry fills the squeeze sizes as the engine computes them (newSqueezeIndex) for a context that fills
// its capacity.
func (p *abParams) geometry() error {
	idx, err := newSqueezeIndex(SqueezeOptions{Budget: abBudget, Centroids: abCentroids, Window: abWindow, Iterations: abIters}, p.ctx, p.ctx)
	if err != nil {
		return err
	}
	p.clustered, p.window, p.budget, p.k, p.maxKept = idx.clustered, idx.window, idx.budget, idx.k, idx.maxKept
	if p.keepAll {
		p.budget = p.clustered
		p.maxKept = (p.ctx + 63) / 64 * 64
	}
	return nil
}

// abData are the device buffers of one (shape, context): nbuf layers' worth.
type abData struct {
	ctxK, ctxV, dynK, dynV         []*tensors.Tensor // [kvh, ctx, hd], [kvh, input, hd]
	cent32, cent16, counts, labels []*tensors.Tensor // [kvh, K, hd] f32 / bf16, [kvh, K], [kvh, ctx]
	starts, order                  []*tensors.Tensor // [kvh, K], [kvh, ctx]
	qDecode, qInput, scalars       *tensors.Tensor
}

func (d *abData) free() {
	for _, ts := range [][]*tensors.Tensor{d.ctxK, d.ctxV, d.dynK, d.dynV, d.cent32, d.cent16, d.counts, d.labels, d.starts, d.order} {
		for _, t := range ts {
			t.FinalizeAll()
		}
	}
	for _, t := range []*tensors.Tensor{d.qDecode, d.qInput, d.scalars} {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// makeData generates the buffers on the device.
func makeData(b compute.Backend, p abParams) (*abData, error) {
	kvh, hd, s, t, k := p.shape.kvHeads, p.shape.headDim, p.ctx, p.input, p.k
	gen, err := NewExec(b, func(state, clustered *Node) []*Node {
		g := state.Graph()
		normal := func(dims ...int) *Node {
			var v *Node
			state, v = RandomNormal(state, shapes.Make(dtypes.Float32, dims...))
			return v
		}
		ctxK, ctxV := ConvertDType(normal(kvh, s, hd), p.dtype), ConvertDType(normal(kvh, s, hd), p.dtype)
		dynK, dynV := ConvertDType(normal(kvh, t, hd), p.dtype), ConvertDType(normal(kvh, t, hd), p.dtype)
		var u *Node
		state, u = RandomUniform(state, shapes.Make(dtypes.Float32, kvh, s))
		pos := Iota(g, shapes.Make(dtypes.Int32, kvh, s), 1)
		inC := LessThan(pos, BroadcastToDims(clustered, kvh, s))
		labels := MinScalar(MaxScalar(ConvertDType(MulScalar(u, float64(k)), dtypes.Int32), 0), k-1)
		labels = Where(inC, labels, ZerosLike(labels)) // rows ≥ clustered: 0, as the engine stores them
		heads := Iota(g, shapes.Make(dtypes.Int32, kvh, s, 1), 0)
		at := Concatenate([]*Node{heads, ExpandAxes(labels, -1)}, -1)
		counts := ScatterSum(Zeros(g, shapes.Make(dtypes.Float32, kvh, k)), at, ConvertDType(inC, dtypes.Float32), false, false)
		cent := normal(kvh, k, hd)
		cent = ConvertDType(ConvertDType(cent, dtypes.BFloat16), dtypes.Float32) // stored precision
		return []*Node{ctxK, ctxV, dynK, dynV, cent, ConvertDType(cent, dtypes.BFloat16), counts, labels, state}
	})
	if err != nil {
		return nil, err
	}
	defer gen.Finalize()
	// The cluster-sorted order, as the engine would make it once per fixed context.
	orderExec, err := NewExec(b, func(labels, counts, clustered *Node) (order, starts *Node) {
		return squeeze.ClusterOrder(labels, counts, clustered)
	})
	if err != nil {
		return nil, err
	}
	defer orderExec.Finalize()
	d := &abData{}
	state, err := RNGStateFromSeed(42)
	if err != nil {
		return nil, err
	}
	for range p.nbuf {
		out, err := gen.Call(state, int32(p.clustered))
		if err != nil {
			d.free()
			return nil, err
		}
		d.ctxK, d.ctxV, d.dynK, d.dynV = append(d.ctxK, out[0]), append(d.ctxV, out[1]), append(d.dynK, out[2]), append(d.dynV, out[3])
		d.cent32, d.cent16, d.counts = append(d.cent32, out[4]), append(d.cent16, out[5]), append(d.counts, out[6])
		d.labels = append(d.labels, out[7])
		state = out[8]
		var order, starts *tensors.Tensor
		if err := abTry(func() error {
			o, err := orderExec.Call(out[7], out[6], int32(p.clustered))
			if err == nil {
				order, starts = o[0], o[1]
			}
			return err
		}); err != nil {
			// Not expected; keeps the benchmark going if the device's sort fails.
			fmt.Printf("  squeeze.ClusterOrder failed on the device (%v); order computed on the host\n", abShort(err))
			if order, starts, err = hostClusterOrder(out[7], p); err != nil {
				d.free()
				return nil, err
			}
			for _, x := range []*tensors.Tensor{order, starts} {
				if err := x.MaterializeOnDevice(b, false, 0); err != nil {
					d.free()
					return nil, err
				}
			}
		}
		d.order, d.starts = append(d.order, order), append(d.starts, starts)
	}
	qgen, err := NewExec(b, func(state *Node) []*Node {
		st, qd := RandomNormal(state, shapes.Make(dtypes.Float32, 1, p.shape.heads, hd))
		_, qi := RandomNormal(st, shapes.Make(dtypes.Float32, t, p.shape.heads, hd))
		return []*Node{ConvertDType(qd, p.dtype), ConvertDType(qi, p.dtype)}
	})
	if err != nil {
		d.free()
		return nil, err
	}
	defer qgen.Finalize()
	out, err := qgen.Call(state)
	if err != nil {
		d.free()
		return nil, err
	}
	d.qDecode, d.qInput = out[0], out[1]
	d.scalars = tensors.FromValue([]int32{int32(p.clustered), int32(p.window), int32(p.budget)})
	if err := d.scalars.MaterializeOnDevice(b, false, 0); err != nil {
		d.free()
		return nil, err
	}
	return d, nil
}

// hostClusterOrder is squeeze.ClusterOrder by a counting sort on the host (a fallback).
func hostClusterOrder(labels *tensors.Tensor, p abParams) (order, starts *tensors.Tensor, err error) {
	l, err := tensors.CopyFlatData[int32](labels)
	if err != nil {
		return nil, nil, err
	}
	kvh, s, k := p.shape.kvHeads, p.ctx, p.k
	o, st := make([]int32, kvh*s), make([]int32, kvh*k)
	for h := range kvh {
		next := make([]int32, k+1)
		for i := range p.clustered {
			next[l[h*s+i]+1]++
		}
		for c := range k {
			next[c+1] += next[c]
			st[h*k+c] = next[c]
		}
		for i := range p.clustered {
			c := l[h*s+i]
			o[h*s+int(next[c])] = int32(i)
			next[c]++
		}
		for i := p.clustered; i < s; i++ {
			o[h*s+i] = int32(i)
		}
	}
	return tensors.FromFlatDataAndDimensions(o, kvh, s), tensors.FromFlatDataAndDimensions(st, kvh, k), nil
}

// args lists an executable's inputs: q, the scalars, then per buffer K, V, dyn K, dyn V, the index.
func (d *abData) args(decode bool) []any {
	q := d.qInput
	if decode {
		q = d.qDecode
	}
	args := []any{q, d.scalars}
	for i := range d.ctxK {
		args = append(args, d.ctxK[i], d.ctxV[i], d.dynK[i], d.dynV[i], d.cent32[i], d.cent16[i], d.counts[i],
			d.labels[i], d.starts[i], d.order[i])
	}
	return args
}

const abPerBuf = 10 // inputs per buffer in args

// buildVariant returns the executable of one variant: all layers chained, outputs a float32 checksum
// and the last layer's attention output.
func buildVariant(b compute.Backend, p abParams, v abVariant) (*graph.Exec, error) {
	c := p.shape.config(p.layers)
	n, heads, hd, kvh, group := p.n(), p.shape.heads, p.shape.headDim, p.shape.kvHeads, c.GroupSize()
	t := p.input
	scale := squeeze.Scale(hd)
	e, err := NewExec(b, func(g *Graph, in []*Node) []*Node {
		q0 := in[0] // [n, heads, hd]
		sc := in[1]
		scalar := func(i int) *Node { return Reshape(Slice(sc, AxisRange(i, i+1))) }
		clustered, window, budget := scalar(0), scalar(1), scalar(2)
		buf := func(l, j int) *Node { return in[2+(l%p.nbuf)*abPerBuf+j] }
		ctxMask := BroadcastToDims(Const(g, true), n, p.ctx) // the context fills its capacity
		var dynMask *Node                                    // [n, t]
		if p.decode {
			dynMask = BroadcastToDims(Const(g, true), n, t) // the decode token sees the whole input
		} else {
			dynMask = LessOrEqual(Iota(g, shapes.Make(dtypes.Int32, n, t), 1), Iota(g, shapes.Make(dtypes.Int32, n, t), 0))
		}
		qgOf := func(q *Node) *Node { // [kvh, n*group, hd]
			return Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3), kvh, n*group, hd)
		}
		index := func(l int) squeeze.LayerIndex {
			ix := squeeze.LayerIndex{Centroids: buf(l, 5), Counts: buf(l, 6), Starts: buf(l, 8), Order: buf(l, 9),
				Clustered: clustered, Window: window, Budget: budget, MaxKept: p.maxKept, Search: abSearch(v.name), Select: abKernels(v.name, "sel"),
				Scores: abKernels(v.name, "sk")}
			if v.sorted {
				ix.Order = nil
			}
			return ix
		}
		kernel := p.kernelInput
		if p.decode {
			kernel = p.kernelDecode
		}
		if strings.HasSuffix(v.name, "-reduce") {
			kernel = squeeze.KernelReduce
		}
		// The stage variants' fixed list (part-paged, part-kept): every 9th row of the context, the budget's
		// number of them, for every head.
		var fixedIdx, fixedValid *Node
		if v.stage {
			fixedIdx = MulScalar(Iota(g, shapes.Make(dtypes.Int32, kvh, p.maxKept), 1), 9)
			fixedIdx = Where(LessThan(fixedIdx, Const(g, int32(p.ctx))), fixedIdx, ZerosLike(fixedIdx))
			fixedValid = LessThan(Iota(g, shapes.Make(dtypes.Int32, kvh, p.maxKept), 1),
				BroadcastToDims(ConvertDType(Add(budget, window), dtypes.Int32), kvh, p.maxKept))
		}
		q := q0
		var last *Node
		for l := range p.layers {
			ctxK, ctxV, dynK, dynV := buf(l, 0), buf(l, 1), buf(l, 2), buf(l, 3)
			var o *Node // [n, heads*hd] or a dependency for the lookups
			switch v.name {
			case "empty":
				o = nil
			case "dense":
				o = attention(c, q, ctxK, ctxV, dynK, dynV, ctxMask, dynMask)
			case "dense-fused":
				o = fusedAttention(c, q, dynK, dynV, layerKV{ctxK: ctxK, ctxV: ctxV, ctxLen: Const(g, int32(p.ctx)),
					ctxMask: ctxMask, dynMask: dynMask, fused: true})
				if o == nil {
					panic(errAbUnsupported)
				}
			case "sq-engine", "sq-engine-paged", "sq-engine-paged-sort", "sq-engine-paged-passes", "sq-engine-sel", "sq-engine-paged-sel", "sq-engine-paged-sel-seg", "sq-engine-paged-sel-seg-look", "sq-engine-paged-sel-seg-look-sorted", "sq-engine-sel-sk", "sq-engine-sel-sk-xdyn":
				cent := buf(l, 4) // the engine's centroids: bfloat16 for a bfloat16 model (centroidDType)
				if p.dtype == dtypes.BFloat16 {
					cent = buf(l, 5)
				}
				sl := &squeezeLayer{centroids: cent, counts: buf(l, 6), starts: buf(l, 8), order: buf(l, 9),
					clustered: clustered, window: window, budget: budget, maxKept: p.maxKept, search: abSearch(v.name),
					selectMode: abKernels(v.name, "sel"), scoresMode: abKernels(v.name, "sk"), segMode: abKernels(v.name, "seg"), lookupMode: abKernels(v.name, "look"),
					freshDyn: !p.decode && !strings.HasSuffix(v.name, "-xdyn")} // an input's dyn segment is its own tokens
				if strings.HasPrefix(v.name, "sq-engine-paged") {
					sl.kernel = squeeze.KernelPaged
				}
				if strings.HasSuffix(v.name, "-sorted") {
					sl.order = nil // the sorted layout: the kept list names rows of cluster runs directly
				}
				o = squeezedAttention(c, q, ctxK, ctxV, dynK, dynV, dynMask, sl)
			case "sq-new", "sq-new-reduce", "sq-sorted", "sq-sorted-reduce":
				o = squeezedAttentionNew(c, q, ctxK, ctxV, dynK, dynV, dynMask, index(l), kernel)
			case "lookup-engine":
				idx := engineLookup(qgOf(q), buf(l, 4), buf(l, 6), buf(l, 7), clustered, window, budget, p.maxKept, scale)
				o = lookupDependency(idx, n, heads*hd, q.DType())
			case "lookup-new", "lookup-sorted", "lookup-passes", "lookup-sort":
				idx, _, _ := squeeze.Select(qgOf(q), index(l), scale)
				o = lookupDependency(idx, n, heads*hd, q.DType())
			case "lookup-sel", "lookup-sel-sk":
				ix := index(l)
				ix.Select = squeeze.SelectOn
				idx, _, _, _ := squeeze.SelectRows(qgOf(q), ix, scale, p.ctx)
				o = lookupDependency(idx, n, heads*hd, q.DType())
			case "lookup-scores":
				o = lookupDependency(squeeze.ClusterScores(qgOf(q), buf(l, 5), buf(l, 6), scale), n, heads*hd, q.DType())
			case "part-paged", "part-dyn", "part-paged-dyn", "part-kept", "part-dyn-in", "part-kept-dyn":
				// A stage of the squeezed step alone: the kept keys' part over the fixed list (decode: the paged
				// kernel; input: the gather and cuDNN), the input tokens' part (decode: the masked graph; input:
				// cuDNN, causal), or both merged.
				qg := qgOf(q)
				var parts []squeeze.Partial
				add := func(pt squeeze.Partial, ok bool) {
					if !ok {
						panic(errAbUnsupported)
					}
					parts = append(parts, pt)
				}
				switch v.name {
				case "part-paged", "part-paged-dyn":
					add(squeeze.SparseAttentionPaged(qg, ctxK, ctxV, fixedIdx, fixedValid, scale))
				case "part-kept", "part-kept-dyn":
					kept := BroadcastToDims(MinScalar(ConvertDType(Add(budget, window), dtypes.Int32), float64(p.maxKept)), kvh)
					add(squeeze.SparseAttentionFused(qg, ctxK, ctxV, fixedIdx, kept, scale))
				}
				switch v.name {
				case "part-dyn", "part-paged-dyn":
					dm := Reshape(BroadcastToDims(Reshape(dynMask, n, 1, t), n, group, t), 1, n*group, t)
					add(squeeze.DenseAttention(qg, dynK, dynV, dm, scale), true)
				case "part-dyn-in", "part-kept-dyn":
					add(squeeze.CausalAttentionFused(qg, dynK, dynV, scale))
				}
				pt := parts[0]
				if len(parts) == 2 {
					pt = squeeze.Merge(pt, parts[1])
				}
				out := TransposeAllAxes(Reshape(ConvertDType(pt.Out, q.DType()), kvh, n, group, hd), 1, 0, 2, 3)
				o = Reshape(out, n, heads*hd)
			case "lookup-lo", "lookup-lo-passes", "lookup-lo-sort":
				scores := squeeze.ClusterScores(qgOf(q), buf(l, 5), buf(l, 6), scale)
				o = lookupDependency(squeeze.Boundary(scores, buf(l, 6), budget, abSearch(v.name)), n, heads*hd, q.DType())
			default:
				panic(fmt.Errorf("unknown variant %q", v.name))
			}
			if o == nil {
				continue
			}
			last = o
			q = Add(q0, Reshape(ConvertDType(o, q0.DType()), n, heads, hd))
		}
		check := ReduceAllSum(ConvertDType(q, dtypes.Float32))
		if last == nil {
			last = Reshape(q, n, heads*hd)
		}
		return []*Node{check, ConvertDType(last, dtypes.Float32)}
	})
	if err != nil {
		return nil, err
	}
	// The engine compiles a decode step for command buffers (CUDA graphs; Runner.newExec, graphName): so does
	// the benchmark's decode, unless -attnbench.graphs=false.
	name := "attnbench_" + strings.ReplaceAll(v.name, "-", "_")
	if (p.decode && *abGraphs) || (!p.decode && *abInputGraphs) {
		name = graphName(name, stepKind{})
	}
	return e.WithName(name), nil
}

var errAbUnsupported = errors.New("not available on this backend")

// squeezedAttentionNew is the proposed body of llama.squeezedAttention: the same query folding and output
// layout, the model-independent part in squeeze.Attend (cluster-level selection, sparse kernel, merge).
// The dynamic segment goes through the fused causal kernel when it is exactly the step's own tokens (a
// user input, as in a prefill step) and the backend has one, else through the masked dense graph.
func squeezedAttentionNew(c *Config, q, ctxK, ctxV, dynK, dynV, dynMask *Node, ix squeeze.LayerIndex, kernel squeeze.Kernel) *Node {
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	dynCap := dynK.Shape().Dimensions[1]
	scale := squeeze.Scale(hd)
	qg := Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3), kvh, n*group, hd) // [numKVHeads, n*group, headDim]
	var dyn squeeze.Partial
	ok := false
	if dynCap == n && n*group >= squeeze.FusedMinQueries && kernel != squeeze.KernelEinsum {
		dyn, ok = squeeze.CausalAttentionFused(qg, dynK, dynV, scale)
	}
	if !ok {
		dm := Reshape(BroadcastToDims(Reshape(dynMask, n, 1, dynCap), n, group, dynCap), 1, n*group, dynCap)
		dyn = squeeze.DenseAttention(qg, dynK, dynV, dm, scale)
	}
	out := squeeze.Attend(qg, ctxK, ctxV, dyn, ix, scale, kernel).Out // [numKVHeads, n*group, headDim]
	out = TransposeAllAxes(Reshape(ConvertDType(out, q.DType()), kvh, n, group, hd), 1, 0, 2, 3)
	return Reshape(out, n, c.NumAttentionHeads*hd)
}

// engineLookup is the former selection part of llama.squeezedAttention (per-key), the same squeeze calls in
// the same order (it has no function of its own to call).
func engineLookup(qg, centroids, counts, labels, clusteredN, windowN, budget *Node, maxKept int, scale float64) *Node {
	g := qg.Graph()
	kvh, ctxCap := labels.Shape().Dimensions[0], labels.Shape().Dimensions[1]
	scores := squeeze.ClusterScores(qg, centroids, counts, scale)
	pos := Iota(g, shapes.Make(dtypes.Int32, kvh, ctxCap), 1)
	clustered := LessThan(pos, BroadcastToDims(clusteredN, kvh, ctxCap))
	end := BroadcastToDims(Add(clusteredN, windowN), kvh, ctxCap)
	windowRows := And(Not(clustered), LessThan(pos, end))
	keyScores := Where(clustered, squeeze.KeyScores(scores, labels), ZerosLike(ConvertDType(pos, dtypes.Float32)))
	keep := And(squeeze.BudgetMaskN(keyScores, budget), clustered)
	idx, _, _ := squeeze.Compact(Or(keep, windowRows), maxKept)
	return idx
}

// lookupDependency makes the next layer's query depend on a lookup's index list without changing it
// noticeably (a compiler cannot prove the product is 0), so layers cannot be merged or skipped.
func lookupDependency(idx *Node, n, width int, dtype dtypes.DType) *Node {
	x := MulScalar(ConvertDType(ReduceAllMax(idx), dtypes.Float32), 1e-30)
	return ConvertDType(BroadcastToDims(x, n, width), dtype)
}

// abResult is one variant's timing.
type abResult struct {
	variant         abVariant
	median, best    time.Duration
	call            time.Duration // slope rows: the L-layer call's median (median is then call(2L) − call(L))
	compile         time.Duration
	err             error
	lastOut         []float32
	checksum        float32
	compiledAlready bool
}

// runConfig compiles (concurrently) and times every variant of one configuration.
func runConfig(t testing.TB, b compute.Backend, p abParams, d *abData, reps int, log func(string, ...any)) []abResult {
	var vs []abVariant
	for _, v := range abVariantList {
		if v.phases != "" && (v.phases == "decode") != p.decode {
			continue
		}
		if len(p.variantsFilter) > 0 && !slices.Contains(p.variantsFilter, v.name) {
			continue
		}
		vs = append(vs, v)
	}
	args := d.args(p.decode)
	var argShapes []shapes.Shape
	for _, a := range args {
		argShapes = append(argShapes, a.(*tensors.Tensor).Shape())
	}
	res := make([]abResult, len(vs))
	execs := make([]*graph.Exec, len(vs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, *abParallel))
	for i, v := range vs {
		res[i].variant = v
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t0 := time.Now()
			err := abTry(func() error {
				e, err := buildVariant(b, p, v)
				if err != nil {
					return err
				}
				execs[i] = e
				_, err = e.Compile(argShapes...)
				return err
			})
			res[i].compile = time.Since(t0)
			res[i].err = err
		}()
	}
	wg.Wait()
	times := make([][]time.Duration, len(vs))
	batch := max(1, *abBatch)
	// rep1 times repetition rep of variant i (the first warms up, untimed): batch calls back to back, the last one's
	// output read (which waits for the device).
	rep1 := func(i, rep int) error {
		r, e := &res[i], execs[i]
		var outs [][]*tensors.Tensor // the repetition's calls' outputs, the last one's read
		t0 := time.Now()
		err := abTry(func() error {
			for range batch {
				out, err := e.Call(args...)
				if err != nil {
					return err
				}
				outs = append(outs, out)
			}
			ck, err := tensors.CopyFlatData[float32](outs[len(outs)-1][0]) // waits for the device
			if err == nil {
				r.checksum = ck[0]
			}
			return err
		})
		dt := time.Since(t0) / time.Duration(batch)
		if err == nil && rep > 0 {
			times[i] = append(times[i], dt)
		}
		if err == nil && rep == reps {
			r.lastOut, _ = tensors.CopyFlatData[float32](outs[len(outs)-1][1])
		}
		for _, out := range outs {
			for _, o := range out {
				o.FinalizeAll()
			}
		}
		return err
	}
	built := make([]bool, len(vs))
	for i := range vs {
		if built[i] = res[i].err == nil; !built[i] {
			log("  %-16s failed to build: %v", res[i].variant.name, abShort(res[i].err))
		}
	}
	finalize := func(i int) {
		if execs[i] != nil {
			execs[i].Finalize()
			execs[i] = nil
		}
	}
	if *abInterleave {
		// Every variant's repetition rep before any variant's rep+1: the variants share the process's and the card's
		// drifts, as a same-process A/B.
		for rep := range reps + 1 {
			for i := range vs {
				if res[i].err == nil {
					res[i].err = rep1(i, rep)
				}
			}
		}
	} else {
		for i := range vs {
			for rep := 0; rep <= reps && res[i].err == nil; rep++ {
				res[i].err = rep1(i, rep)
			}
			finalize(i) // before the next variant runs, as its memory would be
		}
	}
	for i := range vs {
		r := &res[i]
		finalize(i)
		if !built[i] {
			continue
		}
		if r.err != nil {
			log("  %-16s failed: %v", r.variant.name, abShort(r.err))
			continue
		}
		ts := times[i]
		slices.Sort(ts)
		r.median, r.best = ts[len(ts)/2], ts[0]
		log("  %-16s %10.3f ms per call (best %.3f, compile %.1fs)", r.variant.name, ms(r.median), ms(r.best), r.compile.Seconds())
	}
	_ = t
	return res
}

func abTry(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	return f()
}

func abShort(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i > 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// abGBs formats bytes per second as GB/s.
func abGBs(bps float64) string {
	if bps < 10e9 {
		return fmt.Sprintf("%.2f", bps/1e9)
	}
	return fmt.Sprintf("%.0f", bps/1e9)
}

// abIntList parses a comma list of ints (K and M suffixes: ×1024, ×1048576).
func abIntList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToUpper(f))
		if f == "" {
			continue
		}
		mul := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mul, f = 1024, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mul, f = 1<<20, strings.TrimSuffix(f, "M")
		}
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, v*mul)
	}
	return out, nil
}

// TestAttentionBench is the GPU benchmark (see the top of this file); it is skipped without -attnbench.
func TestAttentionBench(t *testing.T) {
	if *abMode == "" {
		t.Skip("run with -attnbench gpu (or tiny)")
	}
	tiny := *abMode == "tiny"
	if *abSplits != 0 {
		defer squeeze.SetPagedSplits(squeeze.SetPagedSplits(*abSplits))
	}
	kind, err := xla.ParseKind(*abBackend)
	if err != nil {
		t.Fatal(err)
	}
	be, err := xla.New(xla.Options{Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	log := func(format string, a ...any) {
		s := fmt.Sprintf(format, a...)
		fmt.Println(s)
	}
	md := func(format string, a ...any) { fmt.Fprintf(&report, format+"\n", a...) }
	log("backend: %s", be.Describe())
	if be.Note != "" {
		log("note: %s", be.Note)
	}
	shapesList := strings.Split(*abShapes, ",")
	if *abShapes == "" {
		shapesList = []string{"7b", "8b"}
		if tiny {
			shapesList = []string{"tiny"}
		}
	}
	layers, reps, input := *abLayers, *abReps, *abInput
	var variantsFilter []string
	if *abVariants != "" {
		variantsFilter = strings.Split(*abVariants, ",")
	}
	start := time.Now()
	md("## Attention benchmark (%s)\n", be.Describe())
	md("bfloat16; fixed budget %.0f%% of the clustered keys, centroids %.0f%%, window %d; the whole model's layers "+
		"chained in one executable; times are medians of the timed calls.\n", 100*abBudget, 100*abCentroids, abWindow)
	if *abBatch > 1 {
		md("Each timed repetition issues %d calls back to back and waits for the last: a call's time is the repetition's / %d.\n", *abBatch, *abBatch)
	}
	if *abSplits != 0 {
		md("The paged kernel's splits: at most %d programs a KV head (-attnbench.splits).\n", *abSplits)
	}
	md("Variants (each computes every layer's attention; sq-* are lookup + selection + sparse attention + merge):\n")
	for _, v := range abVariantList {
		md("- `%s`: %s", v.name, v.about)
	}
	md("")
	if *abCheck {
		checkGraphs(t, be.Backend, shapesList, tiny, log, md)
	}
	var rows []abRow
	var clusterRows []string
	for _, sn := range shapesList {
		shape, ok := abShapeTable[strings.TrimSpace(sn)]
		if !ok {
			t.Fatalf("unknown shape %q", sn)
		}
		ctxs := shape.defaultCtx
		if *abCtx != "" {
			if ctxs, err = abIntList(*abCtx); err != nil {
				t.Fatal(err)
			}
		}
		for _, ctxLen := range ctxs {
			p := abParams{shape: shape, ctx: ctxLen, input: input, layers: layers, dtype: dtypes.BFloat16,
				variantsFilter: variantsFilter}
			if p.input == 0 {
				p.input = shape.defaultInput
			}
			if p.layers == 0 {
				p.layers = shape.defaultLay
			}
			if reps == 0 {
				reps = 5
				if tiny {
					reps = 2
				}
			}
			if err := p.geometry(); err != nil {
				t.Fatal(err)
			}
			perLayer := 2 * float64(shape.kvHeads*ctxLen*shape.headDim) * 2 // K and V, bf16
			p.nbuf = max(1, min(p.layers, int(*abKVGB*1e9/perLayer)))
			log("\n%s, context %d: %d layers over %d distinct K/V buffers (%.2f GB each); K=%d centroids, "+
				"budget %d + window %d keys, kept list %d", shape.name, ctxLen, p.layers, p.nbuf, perLayer/1e9,
				p.k, p.budget, p.window, p.maxKept)
			t0 := time.Now()
			d, err := makeData(be.Backend, p)
			if err != nil {
				t.Fatalf("generating data: %v", err)
			}
			log("  data generated in %.1fs", time.Since(t0).Seconds())
			for _, ph := range strings.Split(*abPhases, ",") {
				p.decode = strings.TrimSpace(ph) == "decode"
				log(" phase %s:", p.phase())
				if *abSelCheck {
					selCheck(be.Backend, p, d, log)
				}
				res := runConfig(t, be.Backend, p, d, reps, log)
				row := abRow{p: p, res: res}
				if *abSlope {
					p2 := p
					p2.layers = 2 * p.layers
					log("  the same with %d layers (-attnbench.slope):", p2.layers)
					row = slopeRow(row, runConfig(t, be.Backend, p2, d, reps, log))
				}
				rows = append(rows, row)
				logSelDiffs(res, log)
			}
			if *abCluster && (tiny || (shape.name == "LLaMA-2-7B" && ctxLen == 32768)) && p.nbuf >= min(p.layers, 32) {
				keys := d.ctxK // clustering reads only the keys: free the rest first
				d.ctxK = nil
				d.free()
				d = &abData{ctxK: keys}
				clusterRows = append(clusterRows, clusterBench(t, be.Backend, p, d, log))
			}
			d.free()
			log("  (%.0fs elapsed)", time.Since(start).Seconds())
		}
	}
	if *abCluster && !slices.ContainsFunc(rows, func(r abRow) bool { return r.p.shape.name == "LLaMA-2-7B" && r.p.ctx == 32768 }) && !tiny {
		log("(clustering is timed with the 7B shape at 32K: include -attnbench.shapes 7b -attnbench.ctx 32K)")
	}
	writeTables(rows, md)
	if len(clusterRows) > 0 {
		md("\n### Clustering (the engine's cluster executable, Runner.clusterExec: squeeze.KMeansMasked and ClusterOrder, one layer a call)\n")
		md("| shape | layers × KV heads | context | K | iterations | time (every layer, compile excluded) | compile |")
		md("|---|---|---|---|---|---|---|")
		for _, r := range clusterRows {
			md("%s", r)
		}
	}
	md("\nTotal benchmark wall time %.0fs.", time.Since(start).Seconds())
	fmt.Println("\n" + report.String())
	if *abOut != "" {
		if err := os.WriteFile(*abOut, []byte(report.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

type abRow struct {
	p   abParams
	res []abResult
	// slope: res[i].median and best are call(2L) − call(L), res[i].call call(L) (slopeRow); else res[i].median is a
	// call of L layers.
	slope bool
}

// slopeRow is r (each variant timed with r.p.layers = L layers chained) with the same variants timed with 2L layers
// (res2): each variant's median and best become the difference of the two calls, the time of L more layers, and its
// call the L-layer call's median. (call − empty call) / L assumes that a call's host time (the empty call's) adds to
// its device time; with several calls in flight (-attnbench.batch) the device's work hides it, so subtracting it
// understates a short call's device time, by up to the empty call's time / L a layer. Session 16 (H200, ten calls a
// repetition, two processes): LLaMA-2-7B 32K decode 50.3 / 50.7 µs a layer by the slope against 35.1 / 32.7 by
// (call − empty) / L from the same 32-layer calls, whose empty calls took 0.51 / 0.55 ms of host time; dense 157.0 /
// 159.0 against 146.0 / 146.3. The ratio is 3.12× / 3.14×, not 4.16× / 4.48× (BENCHMARKS.md, session 16).
func slopeRow(r abRow, res2 []abResult) abRow {
	out := abRow{p: r.p, slope: true, res: slices.Clone(r.res)}
	for i := range out.res {
		x := &out.res[i]
		if i >= len(res2) || res2[i].variant.name != x.variant.name {
			x.err = fmt.Errorf("slope: no %d-layer timing", 2*r.p.layers)
			continue
		}
		if x.err == nil {
			x.err = res2[i].err
		}
		x.call = x.median
		x.median, x.best = res2[i].median-x.median, res2[i].best-x.best
	}
	return out
}

// kvBytes is one layer's bf16 keys and values of the given number of rows.
func (r abRow) kvBytes(rows int) float64 {
	return float64(r.p.shape.kvHeads) * float64(rows) * float64(r.p.shape.headDim) * 2 * 2
}

func (r abRow) get(name string) *abResult {
	for i := range r.res {
		if r.res[i].variant.name == name && r.res[i].err == nil {
			return &r.res[i]
		}
	}
	return nil
}

// official per-layer times of the reference kernels (LLaMA-2-7B shape, kept 10%, H200; from
// SQUEEZED_ATTENTION.md).
var abOfficial = map[string]string{"32768/decode": "0.54", "32768/input": "0.61", "131072/decode": "0.95", "131072/input": "1.13"}

func writeTables(rows []abRow, md func(string, ...any)) {
	if slices.ContainsFunc(rows, func(r abRow) bool { return r.slope }) {
		md("\n### Per variant (ms per call of all layers; per layer = (call of 2L layers − call of L layers) / L, -attnbench.slope)\n")
	} else {
		md("\n### Per variant (ms per call of all layers; per layer = (call − empty call) / layers)\n")
	}
	md("| shape | context | phase | variant | ms per call | µs per layer | vs engine dense (per layer) | K+V GB/s (kept, or all for dense; per layer) |")
	md("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		empty := r.get("empty")
		base := r.baseline()
		keptBytes := float64(r.p.layers) * r.kvBytes(r.p.budget+r.p.window)
		allBytes := float64(r.p.layers) * r.kvBytes(r.p.ctx)
		for _, x := range r.res {
			if x.err != nil {
				msg := "failed: " + strings.ReplaceAll(abShort(x.err), "|", "/")
				if strings.Contains(x.err.Error(), errAbUnsupported.Error()) {
					msg = "n/a: " + errAbUnsupported.Error()
				}
				md("| %s | %d | %s | %s | %s | | | |", r.p.shape.name, r.p.ctx, r.p.phase(), x.variant.name, msg)
				continue
			}
			pl := r.perLayer(&x, empty)
			vs, bw := "", ""
			// Ratios and bandwidths of the attention's time a layer ((call − empty call) / layers), as the text
			// quotes them; before session 10 this column was the ratio of whole calls, fixed cost included.
			if base != nil && !x.variant.lookupOnly && x.variant.name != "empty" && pl > 0 {
				vs = fmt.Sprintf("%.2f×", r.perLayer(base, empty)/pl)
			}
			if pl > 0 {
				layers := float64(r.p.layers)
				switch {
				case strings.HasPrefix(x.variant.name, "dense"):
					bw = abGBs(allBytes/layers/(pl*1e-6)) + " (all K+V)"
				case strings.HasPrefix(x.variant.name, "sq-"):
					bw = abGBs(keptBytes / layers / (pl * 1e-6))
				}
			}
			call := x.median
			if r.slope {
				call = x.call
			}
			md("| %s | %d | %s | %s | %.3f | %.1f | %s | %s |", r.p.shape.name, r.p.ctx, r.p.phase(), x.variant.name,
				ms(call), pl, vs, bw)
		}
	}
	md("\n### Summary (issue 4: squeezed attention at least 4× below the engine's dense attention)\n")
	md("| shape | context | phase | engine dense (µs/layer) | squeezed, the engine's default path (µs/layer, speed-up) | best proposed (µs/layer, speed-up) | its lookup (µs/layer, share) | its sparse read (GB/s of kept K+V over squeezed − lookup) | official kernels, 7B, H200 (µs/layer) |")
	md("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		empty := r.get("empty")
		base := r.baseline()
		if base == nil {
			continue
		}
		bl := r.perLayer(base, empty)
		cell := func(x *abResult) string {
			if x == nil {
				return "–"
			}
			return fmt.Sprintf("%.1f (%.2f×, %s)", r.perLayer(x, empty), bl/r.perLayer(x, empty), x.variant.name)
		}
		var best *abResult
		for _, n := range []string{"sq-new", "sq-new-reduce", "sq-sorted", "sq-sorted-reduce"} {
			if x := r.get(n); x != nil && (best == nil || x.median < best.median) {
				best = x
			}
		}
		lookup, bw := "–", "–"
		if best != nil {
			ln := "lookup-new"
			if best.variant.sorted {
				ln = "lookup-sorted"
			}
			if lk := r.get(ln); lk != nil {
				lpl, bpl := r.perLayer(lk, empty), r.perLayer(best, empty)
				lookup = fmt.Sprintf("%.1f (%.0f%%)", lpl, 100*lpl/bpl)
				if bpl > lpl {
					bw = abGBs(r.kvBytes(r.p.budget+r.p.window) / ((bpl - lpl) * 1e-6))
				}
			}
		}
		official := "–"
		if r.p.shape.name == "LLaMA-2-7B" {
			key := fmt.Sprintf("%d/%s", r.p.ctx, map[bool]string{true: "decode", false: "input"}[r.p.decode])
			if o, ok := abOfficial[key]; ok {
				v, _ := strconv.ParseFloat(o, 64)
				official = fmt.Sprintf("%.0f", v*1000)
			}
		}
		md("| %s | %d | %s | %.1f (%s) | %s | %s | %s | %s | %s |", r.p.shape.name, r.p.ctx, r.p.phase(), bl,
			base.variant.name, cell(r.engineDefault()), cell(best), lookup, bw, official)
	}
	md("\nLayers beyond the distinct K/V buffers reuse them cyclically (see the log: \"layers over N distinct K/V buffers\"). " +
		"Lookup = centroid scores + selection to index lists (no attention); its share is of the same path's squeezed time. " +
		"The engine dense baseline is the fused (cuDNN flash) path for the user input where the backend has it, as the engine runs it.")
}

// engineDefault is the squeezed variant that runs as the engine runs by default on a GPU that passed its probes:
// the selection kernels, and for a decode step of at most squeeze.PagedAutoMaxQueries query heads a KV head the
// paged kernel (squeeze.PagedAuto), with the dynamic segment in its launch for at most
// squeeze.PagedSegAutoMaxQueries, and the lookup kernel; the first of those present, else sq-engine.
func (r abRow) engineDefault() *abResult {
	names := []string{"sq-engine-sel-sk", "sq-engine-sel", "sq-engine"}
	if g := r.p.shape.heads / r.p.shape.kvHeads; r.p.decode && g <= squeeze.PagedAutoMaxQueries {
		names = []string{"sq-engine-paged-sel", "sq-engine-sel", "sq-engine-paged", "sq-engine"}
		if g <= squeeze.PagedSegAutoMaxQueries {
			names = append([]string{"sq-engine-paged-sel-seg-look", "sq-engine-paged-sel-seg"}, names...)
		}
	}
	for _, n := range names {
		if x := r.get(n); x != nil && x.err == nil {
			return x
		}
	}
	return nil
}

// baseline is the engine's dense attention as the engine runs it: fused for a user input where available.
func (r abRow) baseline() *abResult {
	if !r.p.decode {
		if x := r.get("dense-fused"); x != nil {
			return x
		}
	}
	return r.get("dense")
}

// perLayer is (call − empty call) / layers in µs; for a slope row (call(2L) − call(L)) / L, no empty call subtracted.
func (r abRow) perLayer(x, empty *abResult) float64 {
	d := x.median
	if empty != nil && x != empty && !r.slope {
		d -= empty.median
	}
	return float64(d) / 1e3 / float64(r.p.layers)
}

// clusterBench times the engine's clustering executable (Runner.clusterExec: squeeze.KMeansMasked and
// squeeze.ClusterOrder for one layer's KV heads a call) over the configuration's layers.
func clusterBench(t testing.TB, b compute.Backend, p abParams, d *abData, log func(string, ...any)) (row string) {
	layers := min(p.layers, 32)
	r := &Runner{backend: b, cfg: p.shape.config(layers), weights: &Weights{DType: p.dtype}} // the dtype picks the centroids' (centroidDType)
	k := max(2, int(math.Round(abCentroids*float64(p.ctx))))
	log(" clustering: %d layers × %d KV heads × %d keys (%d clustered), K=%d, %d iterations", layers, p.shape.kvHeads,
		p.ctx, p.clustered, k, abIters)
	var compile, run time.Duration
	err := abTry(func() error {
		t0 := time.Now()
		e, err := r.clusterExec(k, 0, k, abIters) // one layer's keys a call, as Runner.buildSqueeze calls it
		if err != nil {
			return err
		}
		defer e.Finalize()
		if _, err := e.Compile(d.ctxK[0].Shape(), shapes.Make(dtypes.Int32)); err != nil {
			return err
		}
		compile = time.Since(t0)
		t0 = time.Now()
		var out []*tensors.Tensor
		for l := range layers {
			if out != nil { // the previous layer's outputs
				for _, o := range out {
					o.FinalizeAll()
				}
			}
			if out, err = e.Call(d.ctxK[l%p.nbuf], int32(p.clustered)); err != nil {
				return err
			}
		}
		if _, err := tensors.CopyFlatData[float32](out[1]); err != nil { // the last layer's counts: waits for the device
			return err
		}
		run = time.Since(t0)
		// Sanity: every clustered key is in one cluster (the last layer's).
		counts, err := tensors.CopyFlatData[float32](out[1])
		if err != nil {
			return err
		}
		sum := 0.0
		for _, c := range counts {
			sum += float64(c)
		}
		if want := float64(p.clustered * p.shape.kvHeads); math.Abs(sum-want) > 0.5 {
			return fmt.Errorf("the last layer's counts add up to %.0f, want %.0f", sum, want)
		}
		for _, o := range out {
			o.FinalizeAll()
		}
		return nil
	})
	if err != nil {
		log("  clustering failed: %v", abShort(err))
		return fmt.Sprintf("| %s | %d × %d | %d | %d | %d | failed: %s | |", p.shape.name, layers, p.shape.kvHeads, p.ctx,
			k, abIters, strings.ReplaceAll(abShort(err), "|", "/"))
	}
	log("  clustering: %.2fs (compile %.1fs)", run.Seconds(), compile.Seconds())
	_ = t
	return fmt.Sprintf("| %s | %d × %d | %d | %d | %d | %.2f s | %.1f s |", p.shape.name, layers, p.shape.kvHeads, p.ctx,
		k, abIters, run.Seconds(), compile.Seconds())
}

// checkGraphs runs the benchmark's graphs with every key kept, in bfloat16, at a small context on the
// benchmark's backend (so the fused GPU kernels are checked too), and reports how far each squeezed
// variant is from the engine's dense attention.
func checkGraphs(t testing.TB, b compute.Backend, shapesList []string, tiny bool, log func(string, ...any), md func(string, ...any)) {
	ctx := 4096
	if tiny {
		ctx = 1024
	}
	md("### Check: every key kept, bfloat16, context %d, 2 layers (max |squeezed − dense| / max |dense|)\n", ctx)
	md("| shape | phase | variant | relative difference |")
	md("|---|---|---|---|")
	for _, sn := range shapesList {
		shape := abShapeTable[strings.TrimSpace(sn)]
		for _, decode := range []bool{true, false} {
			p := abParams{shape: shape, ctx: ctx, input: shape.defaultInput, layers: 2, nbuf: 1, decode: decode,
				dtype: dtypes.BFloat16, keepAll: true}
			if err := p.geometry(); err != nil {
				t.Fatal(err)
			}
			d, err := makeData(b, p)
			if err != nil {
				t.Fatalf("check data: %v", err)
			}
			p.variantsFilter = []string{"dense", "dense-fused", "sq-engine", "sq-new", "sq-new-reduce", "sq-sorted", "sq-engine-paged",
				"sq-engine-sel", "sq-engine-paged-sel", "sq-engine-paged-sel-seg", "sq-engine-paged-sel-seg-look", "sq-engine-sel-sk", "sq-engine-sel-sk-xdyn"}
			log("check %s %s, every key kept:", shape.name, p.phase())
			res := runConfig(t, b, p, d, 1, log)
			d.free()
			ref := abRow{p: p, res: res}.baseline()
			if ref == nil {
				md("| %s | %s | dense | failed |", shape.name, p.phase())
				continue
			}
			scale := 0.0
			for _, x := range ref.lastOut {
				scale = math.Max(scale, math.Abs(float64(x)))
			}
			for _, r := range res {
				switch {
				case r.err != nil:
					msg := "failed: " + strings.ReplaceAll(abShort(r.err), "|", "/")
					if strings.Contains(r.err.Error(), errAbUnsupported.Error()) {
						msg = "n/a"
					}
					md("| %s | %s | %s | %s |", shape.name, p.phase(), r.variant.name, msg)
				case r.variant.name != ref.variant.name:
					diff := 0.0
					for i := range r.lastOut {
						diff = math.Max(diff, math.Abs(float64(r.lastOut[i]-ref.lastOut[i])))
					}
					md("| %s | %s | %s vs %s | %.1e |", shape.name, p.phase(), r.variant.name, ref.variant.name, diff/scale)
				}
			}
		}
	}
}

// selCheck checks layer 0's selection of one phase (the benchmark's queries, budget mode), XLA's
// (squeeze.SelectDropped) and the selection kernels' (squeeze.SelectRows, SelectOn), against the exact selection
// computed on the host from the cluster scores the device computed (squeeze.ClusterScores): per head the clusters
// above the budget's boundary score whole, then those at the boundary in cluster order until the budget. It logs
// the (head, cluster) pairs whose taken keys differ and the heads whose kept count differs, for each.
func selCheck(b compute.Backend, p abParams, d *abData, log func(string, ...any)) {
	c := p.shape.config(1)
	n, kvh, group, hd := p.n(), p.shape.kvHeads, c.GroupSize(), p.shape.headDim
	scale := squeeze.Scale(hd)
	q := d.qInput
	if p.decode {
		q = d.qDecode
	}
	err := abTry(func() error {
		out := MustExecOnceN(b, func(q, sc, cent, counts, starts, order *Node) []*Node {
			scalar := func(i int) *Node { return Reshape(Slice(sc, AxisRange(i, i+1))) }
			qg := Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3), kvh, n*group, hd)
			ix := squeeze.LayerIndex{Centroids: cent, Counts: counts, Starts: starts, Order: order, Clustered: scalar(0),
				Window: scalar(1), Budget: scalar(2), MaxKept: p.maxKept, Select: squeeze.SelectOff}
			idxX, validX, keptX, dropX := squeeze.SelectDropped(qg, ix, scale)
			ix.Select = squeeze.SelectOn
			idxK, validK, keptK, dropK := squeeze.SelectRows(qg, ix, scale, p.ctx)
			// The rows each list holds, as [H, S] counts: the (head, row) pairs where they differ.
			mask := func(idx, valid *Node) *Node {
				g := idx.Graph()
				h, b := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
				at := Concatenate([]*Node{Iota(g, shapes.Make(dtypes.Int32, h, b, 1), 0), ExpandAxes(idx, -1)}, -1)
				return ScatterSum(Zeros(g, shapes.Make(dtypes.Int32, h, p.ctx)), at, ConvertDType(valid, dtypes.Int32), false, false)
			}
			rowDiff := ReduceAllSum(ConvertDType(NotEqual(mask(idxX, validX), mask(idxK, validK)), dtypes.Int32))
			return []*Node{squeeze.ClusterScores(qg, cent, counts, scale), ConvertDType(counts, dtypes.Float32), keptX, dropX, keptK, dropK, rowDiff}
		}, q, d.scalars, d.cent16[0], d.counts[0], d.starts[0], d.order[0])
		scores, counts := tensors.MustCopyFlatData[float32](out[0]), tensors.MustCopyFlatData[float32](out[1])
		k := p.k
		want := make([]float32, kvh*k) // taken keys per cluster
		wantKept := make([]int32, kvh)
		for h := range kvh {
			ids := make([]int, k)
			for i := range ids {
				ids[i] = i
			}
			sc := scores[h*k : (h+1)*k]
			slices.SortStableFunc(ids, func(a, b int) int { return cmp.Compare(sc[b], sc[a]) })
			// The boundary: the score of the cluster in which the running count reaches the budget.
			run, lo := 0, float32(0)
			for _, i := range ids {
				run += int(counts[h*k+i])
				if run >= p.budget {
					lo = sc[i]
					break
				}
			}
			room := p.budget
			for i := range k {
				if sc[i] > lo {
					want[h*k+i] = counts[h*k+i]
					room -= int(counts[h*k+i])
				}
			}
			for i := range k {
				if sc[i] == lo {
					tk := min(max(room, 0), int(counts[h*k+i]))
					want[h*k+i] = float32(tk)
					room -= tk
				}
			}
			wantKept[h] = int32(min(p.budget-max(room, 0)+p.window, p.maxKept))
		}
		for i, name := range []string{"XLA", "kernels"} {
			kept, dropped := tensors.MustCopyFlatData[int32](out[2+2*i]), tensors.MustCopyFlatData[float32](out[3+2*i])
			bad, badKept := 0, 0
			for j := range want {
				if counts[j]-dropped[j] != want[j] {
					bad++
				}
			}
			for h := range kvh {
				if kept[h] != wantKept[h] {
					badKept++
				}
			}
			log("  selcheck %s %s: %d of %d (head, cluster) taken counts differ from the exact selection, %d of %d heads' kept counts (kept[0] %d, exact %d)",
				p.phase(), name, bad, len(want), badKept, kvh, kept[0], wantKept[0])
		}
		log("  selcheck %s: the two lists' rows differ at %d (head, row) pairs", p.phase(), out[6].Value().(int32))
		return nil
	})
	if err != nil {
		log("  selcheck %s failed: %v", p.phase(), abShort(err))
	}
}

// logSelDiffs logs how far each "-sel" variant's last output (the selection kernels) is from its counterpart's
// without them (XLA's selection: the same keys, listed in another order), relative to the counterpart's largest
// value: a check of the kernels at the benchmark's own shapes and budget.
func logSelDiffs(res []abResult, log func(string, ...any)) {
	for _, r := range res {
		name, ok := strings.CutSuffix(r.variant.name, "-sel")
		if !ok || r.err != nil {
			continue
		}
		for _, o := range res {
			if o.variant.name != name || o.err != nil || len(o.lastOut) != len(r.lastOut) {
				continue
			}
			diff, scale := 0.0, 0.0
			for i := range o.lastOut {
				diff = math.Max(diff, math.Abs(float64(r.lastOut[i]-o.lastOut[i])))
				scale = math.Max(scale, math.Abs(float64(o.lastOut[i])))
			}
			log("  check %s vs %s: max |difference| / max |value| = %.1e", r.variant.name, name, diff/scale)
		}
	}
}

// TestAttentionBenchGraphs checks the benchmark's graphs on the CPU at tiny shapes in float32: with every
// key kept, every squeezed variant's output equals the engine's dense attention's, layer chain included,
// and the lookups run; the variants are timed one after another for the GQA shape and interleaved for MHA.
func TestAttentionBenchGraphs(t *testing.T) {
	b := goBackend(t)
	shape := abShapeTable["tiny"]
	defer func(v bool) { *abInterleave = v }(*abInterleave)
	for _, decode := range []bool{true, false} {
		for _, kvHeads := range []int{2, 4} { // GQA and MHA
			shape.kvHeads = kvHeads
			*abInterleave = kvHeads == 4 // both timing orders: every variant still ends with its own output
			p := abParams{shape: shape, ctx: 1024, input: 16, layers: 3, nbuf: 2, decode: decode, dtype: dtypes.Float32, keepAll: true}
			if err := p.geometry(); err != nil {
				t.Fatal(err)
			}
			d, err := makeData(b, p)
			if err != nil {
				t.Fatal(err)
			}
			// The host fallback of the cluster order agrees with squeeze.ClusterOrder.
			for i := range d.labels {
				ho, hs, err := hostClusterOrder(d.labels[i], p)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(tensors.MustCopyFlatData[int32](ho), tensors.MustCopyFlatData[int32](d.order[i])) ||
					!slices.Equal(tensors.MustCopyFlatData[int32](hs), tensors.MustCopyFlatData[int32](d.starts[i])) {
					t.Fatalf("buffer %d: host cluster order differs from squeeze.ClusterOrder", i)
				}
			}
			var lines []string
			res := runConfig(t, b, p, d, 1, func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
			d.free()
			name := fmt.Sprintf("%s kvHeads=%d", p.phase(), kvHeads)
			var dense *abResult
			for i := range res {
				if res[i].variant.name == "dense" {
					dense = &res[i]
				}
			}
			if dense == nil || dense.err != nil {
				t.Fatalf("%s: dense failed: %v", name, lines)
			}
			for _, r := range res {
				switch {
				case (r.variant.name == "dense-fused" || r.variant.stage) && r.err != nil && strings.Contains(r.err.Error(), errAbUnsupported.Error()):
					continue // no fused attention or paged kernel on the pure-Go backend
				case r.err != nil:
					t.Errorf("%s: %s failed: %v", name, r.variant.name, r.err)
					continue
				case r.variant.lookupOnly || r.variant.stage || r.variant.name == "empty":
					continue
				}
				diff := 0.0
				for i := range r.lastOut {
					diff = math.Max(diff, math.Abs(float64(r.lastOut[i]-dense.lastOut[i])))
				}
				if diff > 1e-4 || math.IsNaN(diff) || len(r.lastOut) != len(dense.lastOut) {
					t.Errorf("%s: %s differs from dense by %.2e (every key kept)", name, r.variant.name, diff)
				}
				t.Logf("%s: %s vs dense: max |Δ| %.1e over %d values", name, r.variant.name, diff, len(r.lastOut))
			}
		}
	}
}

// TestSlopeRow: -attnbench.slope's row takes each variant's time per layer from the difference of its L- and 2L-layer
// calls, subtracts no empty call, keeps the L-layer call for the report, and names a variant that has no 2L timing
// or whose 2L timing failed.
func TestSlopeRow(t *testing.T) {
	msd := func(x float64) time.Duration { return time.Duration(x * 1e6) }
	v := func(name string) abVariant { return abVariant{name: name} }
	r := abRow{p: abParams{layers: 4}, res: []abResult{
		{variant: v("empty"), median: msd(0.5), best: msd(0.4)},
		{variant: v("dense"), median: msd(30), best: msd(29)},
		{variant: v("sq-engine"), median: msd(8), best: msd(7)},
		{variant: v("sq-new"), median: msd(9), best: msd(9)},
	}}
	if got := r.perLayer(&r.res[1], &r.res[0]); math.Abs(got-(30-0.5)/4*1e3) > 1e-6 {
		t.Errorf("(call − empty) / L: %v µs", got)
	}
	s := slopeRow(r, []abResult{
		{variant: v("empty"), median: msd(0.6), best: msd(0.4)},
		{variant: v("dense"), median: msd(58), best: msd(56)},
		{variant: v("sq-engine"), err: errors.New("boom")},
	})
	if !s.slope || s.res[1].call != msd(30) || s.res[1].median != msd(28) || s.res[1].best != msd(27) {
		t.Errorf("dense in the slope row: %+v", s.res[1])
	}
	if got := s.perLayer(&s.res[1], &s.res[0]); math.Abs(got-7000) > 1e-6 {
		t.Errorf("slope per layer %v µs, want 7000 (no empty call subtracted)", got)
	}
	if s.res[2].err == nil || s.res[3].err == nil || !strings.Contains(s.res[3].err.Error(), "no 8-layer timing") {
		t.Errorf("a failed or missing 2L timing: %v, %v", s.res[2].err, s.res[3].err)
	}
	if r.res[1].median != msd(30) || r.slope {
		t.Errorf("slopeRow changed its input row")
	}
}
