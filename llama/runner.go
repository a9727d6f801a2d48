package llama

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/model"
	"github.com/squeezeai/sqllm/squeeze"
)

// Options tune how a Runner executes the model.
type Options struct {
	// MaxChunk is the largest number of tokens one prefill step processes (a power of two). Default 512.
	MaxChunk int
	// DynBlock is the capacity granule of a sequence's dynamic segment. Default 128.
	DynBlock int
	// CtxGranule: context capacities are powers of two up to it, then multiples of it. Default 512.
	CtxGranule int
	// MaxLen overrides the context limit (default Config.MaxPositionEmbeddings).
	MaxLen int
	// NoFusedAttention keeps steps on the plain attention graph even where the backend has a fused
	// attention op (for A/B checks; also SQLLM_NO_FUSED=1).
	NoFusedAttention bool
}

func (o *Options) setDefaults() {
	if o.MaxChunk <= 0 {
		o.MaxChunk = 512
	}
	o.MaxChunk = nextPow2(min(o.MaxChunk, 1<<16))
	if o.DynBlock <= 0 {
		o.DynBlock = 128
	}
	if o.CtxGranule <= 0 {
		o.CtxGranule = 512
	}
}

// Runner executes one model on one backend device. It is safe for concurrent use by many Sequences.
type Runner struct {
	cfg     *Config
	backend compute.Backend
	weights *Weights
	opts    Options
	maxLen  int

	steps map[stepKind]*graph.Exec // the dense step executables, built once (read only after NewRunner)

	mu       sync.Mutex
	writes   map[int]*graph.Exec     // by output capacity
	zeros    map[int]*kvTensors      // read-only zero buffers by capacity
	invFreqs map[int]*tensors.Tensor // RoPE inverse frequencies on the device, by max position (dynamic scaling)
	sqSteps  map[string]*graph.Exec  // squeezed steps, by index geometry
}

// kvTensors are per-layer key and value buffers [numKVHeads, capacity, headDim].
type kvTensors struct {
	k, v []*tensors.Tensor
}

func (kv *kvTensors) capacity() int {
	if kv == nil || len(kv.k) == 0 {
		return 0
	}
	return kv.k[0].Shape().Dimensions[1]
}

func (kv *kvTensors) finalize() {
	if kv == nil {
		return
	}
	for _, t := range append(kv.k, kv.v...) {
		t.FinalizeAll()
	}
}

// NewRunner moves the weights to the backend's device, packs them into the steps' layout (packWeights:
// w.Tensors is replaced; the runner owns w and frees it on Close) and prepares the compiled steps.
func NewRunner(backend compute.Backend, cfg *Config, w *Weights, opts Options) (*Runner, error) {
	opts.setDefaults()
	r := &Runner{cfg: cfg, backend: backend, weights: w, opts: opts,
		writes: map[int]*graph.Exec{}, zeros: map[int]*kvTensors{}}
	r.maxLen = cfg.MaxPositionEmbeddings
	if opts.MaxLen > cfg.MaxPositionEmbeddings {
		return nil, fmt.Errorf("llama: context limit %d exceeds the model's max_position_embeddings %d",
			opts.MaxLen, cfg.MaxPositionEmbeddings)
	}
	if opts.MaxLen > 0 {
		r.maxLen = opts.MaxLen
	}
	for _, t := range w.Tensors {
		if err := t.MaterializeOnDevice(backend, false, 0); err != nil {
			return nil, fmt.Errorf("llama: moving weights to %s: %w", backend.Name(), err)
		}
		t.FinalizeLocal()
	}
	if err := packWeights(backend, cfg, w); err != nil {
		return nil, err
	}
	if os.Getenv("SQLLM_NO_FUSED") != "" {
		r.opts.NoFusedAttention = true
	}
	r.steps = map[stepKind]*graph.Exec{}
	for _, all := range []bool{false, true} {
		for _, kind := range []stepKind{{hasCtx: true}, {hasCtx: true, deviceToken: true}, {prefill: true},
			{prefill: true, hasCtx: true}, {hasCtx: true, large: true}, {prefill: true, large: true},
			{prefill: true, hasCtx: true, large: true}} {
			if kind.deviceToken && all { // device-token steps are greedy: they never return all logits
				continue
			}
			kind.allLogits = all
			e, err := r.newExec(kind, nil)
			if err != nil {
				return nil, err
			}
			r.steps[kind] = e
		}
	}
	return r, nil
}

// packWeights turns w (Config.WeightNames order) into the step's packed order (see layerNodes): per
// layer inNorm, q|k|v, o, postNorm, gate|up, down, then the biases present (q|k|v, o, gate|up, down).
// On the pure-Go backend the four projection matrices are also transposed to [in, out] (see
// transposedProjections). The work runs on the device, one layer at a time, and each layer's original
// matrices are freed as soon as they are packed, so the peak memory grows by one layer's matrices.
func packWeights(backend compute.Backend, c *Config, w *Weights) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("llama: packing the weights: %v", r)
		}
	}()
	nGlobal, nLayer := len(globalWeightSpecs(c)), len(layerWeightSpecs(c))
	if len(w.Tensors) != nGlobal+c.NumHiddenLayers*nLayer {
		return fmt.Errorf("llama: %d weight tensors, the config needs %d", len(w.Tensors), nGlobal+c.NumHiddenLayers*nLayer)
	}
	transpose := transposedProjections(backend)
	// Inputs: q, k, v, gate, up, [o, down when transposing], [q/k/v biases], [gate/up biases].
	// Outputs: q|k|v, gate|up, [o, down transposed], [q|k|v bias], [gate|up bias].
	exec, err := graph.NewExec(backend, func(in []*graph.Node) []*graph.Node {
		out := []*graph.Node{graph.Concatenate(in[:3], 0), graph.Concatenate(in[3:5], 0)}
		in = in[5:]
		if transpose {
			out = append(out, in[0], in[1])
			for i := range 4 {
				out[i] = graph.Transpose(out[i], 0, 1)
			}
			in = in[2:]
		}
		if c.AttentionBias {
			out, in = append(out, graph.Concatenate(in[:3], 0)), in[3:]
		}
		if c.MLPBias {
			out = append(out, graph.Concatenate(in[:2], 0))
		}
		return out
	})
	if err != nil {
		return err
	}
	defer exec.Finalize()
	packed := append([]*tensors.Tensor{}, w.Tensors[:nGlobal]...)
	for l := range c.NumHiddenLayers {
		lw := w.Tensors[nGlobal+l*nLayer : nGlobal+(l+1)*nLayer]
		biases := lw[9:]
		var qkvBias, oBias, guBias, downBias []*tensors.Tensor
		if c.AttentionBias {
			qkvBias, biases = biases[:3], biases[3:]
		}
		if c.AttentionOutBias {
			oBias, biases = biases[:1], biases[1:]
		}
		if c.MLPBias {
			guBias, downBias = biases[:2], biases[2:3]
		}
		used := []*tensors.Tensor{lw[1], lw[2], lw[3], lw[6], lw[7]}
		if transpose {
			used = append(used, lw[4], lw[8])
		}
		used = append(append(used, qkvBias...), guBias...)
		args := make([]any, len(used))
		for i, t := range used {
			args[i] = t
		}
		out, err := exec.Call(args...)
		if err != nil {
			return fmt.Errorf("llama: packing layer %d's weights: %w", l, err)
		}
		qkv, gu, o, down := out[0], out[1], lw[4], lw[8]
		out = out[2:]
		if transpose {
			o, down, out = out[0], out[1], out[2:]
		}
		packed = append(packed, lw[0], qkv, o, lw[5], gu, down)
		if c.AttentionBias {
			packed, out = append(packed, out[0]), out[1:]
		}
		packed = append(packed, oBias...)
		if c.MLPBias {
			packed = append(packed, out[0], downBias[0])
		}
		for _, t := range used {
			t.FinalizeAll()
		}
	}
	w.Tensors = packed
	return nil
}

// transposedProjections reports whether the backend's steps take their projection matrices in [in, out]
// layout instead of Hugging Face's [out, in] (see linear). XLA on the GPU reads [out, in] twice as fast
// in single-row products (BENCHMARKS.md, the projection benchmark); the pure-Go backend's matrix
// kernels are faster with [in, out].
func transposedProjections(b compute.Backend) bool { return b.String() == "go" }

// Config returns the model's blueprint.
func (r *Runner) Config() *Config { return r.cfg }

// Backend returns the backend the runner executes on.
func (r *Runner) Backend() compute.Backend { return r.backend }

// DType is the compute dtype (the weights', activations' and KV cache's).
func (r *Runner) DType() dtypes.DType { return r.weights.DType }

// MaxLen is the context limit of a sequence.
func (r *Runner) MaxLen() int { return r.maxLen }

// Close releases the device weights.
func (r *Runner) Close() error {
	for _, t := range r.weights.Tensors {
		t.FinalizeAll()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, z := range r.zeros {
		z.finalize()
	}
	for _, t := range r.invFreqs {
		t.FinalizeAll()
	}
	return nil
}

const maxCompiled = 256

// numScalars is the number of int32 scalars after the tokens in a step's packed input: ctxLen, dynLen,
// nValid, and for a squeezed prefix its clustered keys, window and budget.
const numScalars = 6

// trace prints every step's timing to stderr (SQLLM_TRACE=1).
var trace = os.Getenv("SQLLM_TRACE") != ""

// stepKind says which inputs a step executable takes. A prefill step (a sequence's first Append) has
// no dyn input: its chunk's keys/values come out as they are; the first chunk has no fixed context
// either.
type stepKind struct {
	allLogits bool // logits at every position, else only the last valid one
	prefill   bool // no dyn input: the chunk's keys/values are the dyn output
	hasCtx    bool // a fixed-context input (always, except for a sequence's first prefill chunk)
	// deviceToken: the step's one token is its last input, a scalar int32 on the device (the previous
	// step's argmax), instead of the packed host vector's first entry (DecodeGreedy's pipelined steps).
	deviceToken bool
	// large: more than graphRows rows per call. Smaller steps (decode, short user inputs) are compiled for
	// command buffers (CUDA graphs) on XLA; larger ones without (graphName).
	large bool
	// freshDyn (squeezed steps only): the dynamic segment is empty before the step (a user input's first
	// chunk after a prefix), so its valid rows are the step's own tokens, attended causally: through the
	// fused attention where the backend has it (squeezedAttention).
	freshDyn bool
}

// testFreshDyn (tests only): 1 makes a fresh dynamic segment compile its own step on a backend without
// fused attention too, where squeezedAttention's fresh-segment branch then runs its fallback; -1 makes no
// segment fresh, so that the step treats it as any other (token-major rows, the masked dense graph).
var testFreshDyn int

// graphRows is the largest step (token rows, bucketed) compiled for command buffers. Measured on an H100
// (LLaMA-2-7B shape, 32K fixed context; scripts/gpu/cmdbuf_squeeze.sh): with graphs a squeezed decode step
// went 17.8 → 9.4 ms and the 8K+64-token memory hit 10.7 → 9.9 ms, but a 512-token user-input step 58 →
// 68 ms (dense) and 58 → 87 ms (squeezed). Session 17 (H200, 7B shape, 32K, 512-token input): with graphs for the
// input step (SQLLM_GRAPH_ROWS=512) and XLA's concurrent scheduling of their commands
// (--xla_gpu_command_buffer_scheduling_mode=CONCURRENT) the step took 32.72 ms against 32.51 without graphs, though
// the attention benchmark's input attention gained 6-12 µs a layer (scripts/gpu/session17_a.sh), so 128 stays.
// SQLLM_GRAPH_ROWS sets another bound (a positive integer).
var graphRows = envInt("SQLLM_GRAPH_ROWS", 128)

// graphName marks the name of a step executable of at most graphRows rows for command buffers:
// backend/xla compiles computations named with "cudagraph" (xla.GraphMarker) with them, the others without.
func graphName(name string, kind stepKind) string {
	if kind.large {
		return name
	}
	return name + "_cudagraph"
}

// newExec builds a step executable; with a squeeze index, its inputs end with every layer's centroids,
// counts, cluster starts and cluster order, and the fixed context is read sparsely.
func (r *Runner) newExec(kind stepKind, sq *squeezeIndex) (*graph.Exec, error) {
	allLogits := kind.allLogits
	c := r.cfg
	nw := len(r.weights.Tensors)
	if sq != nil && r.backend.String() != "go" { // the pure-Go backend has neither kernel
		// Once per backend, before a graph that may take the kernels is built.
		if squeeze.Paged == squeeze.PagedAuto {
			squeeze.ProbePaged(r.backend)
		}
		if squeeze.PagedSeg == squeeze.PagedAuto {
			squeeze.ProbePagedSeg(r.backend)
		}
		if squeeze.SelectKernels == squeeze.SelectAuto {
			squeeze.ProbeSelect(r.backend)
		}
		if squeeze.ScoresKernels == squeeze.SelectAuto {
			squeeze.ProbeScores(r.backend)
		}
		if squeeze.LookupKernel == squeeze.SelectAuto {
			squeeze.ProbeLookup(r.backend)
		}
	}
	L := c.NumHiddenLayers
	fn := func(g *graph.Graph, in []*graph.Node) []*graph.Node {
		w := unpackWeights(c, in[:nw])
		rest := in[nw:]
		// One int32 vector carries the step's host inputs: [tokens (n)..., ctxLen, dynLen, nValid].
		packed := rest[1]
		n := packed.Shape().Dimensions[0] - numScalars
		scalar := func(i int) *graph.Node { return graph.Reshape(graph.Slice(packed, graph.AxisRange(n+i, n+i+1))) }
		tokens := graph.Slice(packed, graph.AxisRange(0, n))
		if kind.deviceToken {
			tokens = graph.Reshape(in[len(in)-1], 1)
		}
		s := stepInputs{
			invFreq: rest[0], tokens: tokens,
			ctxLen: scalar(0), dynLen: scalar(1), nValid: scalar(2),
			allLogits: allLogits,
			fused:     !r.opts.NoFusedAttention && n >= fusedMinTokens,
		}
		freshDyn := kind.freshDyn && !r.opts.NoFusedAttention
		kv := rest[2:]
		if kind.hasCtx {
			s.ctxK, s.ctxV, kv = kv[:L], kv[L:2*L], kv[2*L:]
		}
		if !kind.prefill {
			s.dynK, s.dynV, kv = kv[:L], kv[L:2*L], kv[2*L:]
		}
		if sq != nil {
			idx := kv
			s.squeeze = &squeezeInputs{}
			per := sq.inputsPerLayer()
			var threshold *graph.Node // calibrated mode: a scalar float32 after the layers' index
			if sq.calibrated() {
				threshold = idx[per*L]
			}
			for l := range L {
				budget := scalar(5)
				if sq.layerKept != nil { // every slot of the layer's own list that the window does not use
					budget = graph.Sub(graph.Const(g, int32(sq.listSize(l))), scalar(4))
				}
				li := idx[per*l:]
				sl := squeezeLayer{
					centroids: li[0], counts: li[1], starts: li[2], order: li[3],
					clustered: scalar(3), window: scalar(4), budget: budget,
					maxKept: sq.listSize(l), threshold: threshold, mass: sq.opts.Mass, freshDyn: freshDyn}
				if per > 4 {
					sl.means = li[4]
				}
				if per > 5 {
					sl.meanSums = li[5]
				}
				s.squeeze.layers = append(s.squeeze.layers, sl)
			}
		}
		logits, dynK, dynV := forward(c, w, s)
		// The argmax too, so that greedy decoding copies one id to the host instead of the vocabulary's logits.
		next := graph.ArgMax(logits, -1)
		out := append(append([]*graph.Node{logits, next}, dynK...), dynV...)
		if s.squeeze != nil { // then the kept clustered keys, summed over the layers and KV heads (SqueezeKept)
			kept := s.squeeze.layers[0].keptKeys
			for _, sl := range s.squeeze.layers[1:] {
				kept = graph.Add(kept, sl.keptKeys)
			}
			out = append(out, kept)
		}
		return out
	}
	name := "step"
	if kind.prefill {
		name = "prefill"
		if !kind.hasCtx {
			name = "prefill_first"
		}
	}
	if allLogits {
		name += "_all_logits"
	}
	if kind.deviceToken {
		name += "_device_token"
	}
	e, err := graph.NewExec(r.backend, fn)
	if err != nil {
		return nil, err
	}
	return e.WithName(graphName(name, kind)).SetMaxCache(maxCompiled), nil
}

// writeExec returns the executable that writes rows into one layer's key or value buffer, growing it to
// capacity (writeKV calls it once a buffer).
func (r *Runner) writeExec(capacity int) (*graph.Exec, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.writes[capacity]; ok {
		return e, nil
	}
	fn := func(dst, src, off, count *graph.Node) *graph.Node {
		if have := dst.Shape().Dimensions[1]; have < capacity {
			dims := dst.Shape().Clone().Dimensions
			dims[1] = capacity - have
			dst = graph.Concatenate([]*graph.Node{dst, graph.Zeros(dst.Graph(), shapes.Make(dst.DType(), dims...))}, 1)
		}
		return writeRows(dst, src, off, count)
	}
	e, err := graph.NewExec(r.backend, fn)
	if err != nil {
		return nil, err
	}
	e = e.WithName(fmt.Sprintf("write_kv_%d", capacity)).SetMaxCache(maxCompiled)
	r.writes[capacity] = e
	return e, nil
}

// zeroKV returns shared read-only zero KV buffers of the given capacity.
func (r *Runner) zeroKV(capacity int) *kvTensors {
	r.mu.Lock()
	defer r.mu.Unlock()
	if z, ok := r.zeros[capacity]; ok {
		return z
	}
	z := r.newKV(capacity)
	r.zeros[capacity] = z
	return z
}

func (r *Runner) newKV(capacity int) *kvTensors {
	c := r.cfg
	kv := &kvTensors{}
	for range c.NumHiddenLayers {
		kv.k = append(kv.k, tensors.FromShape(shapes.Make(r.weights.DType, c.NumKeyValueHeads, capacity, c.HeadDim)))
		kv.v = append(kv.v, tensors.FromShape(shapes.Make(r.weights.DType, c.NumKeyValueHeads, capacity, c.HeadDim)))
	}
	return kv
}

// ctxCapacity rounds a context length up to a bucket: powers of two up to CtxGranule, then multiples of it.
func (r *Runner) ctxCapacity(n int) int {
	g := r.opts.CtxGranule
	if n <= g {
		return max(16, nextPow2(n))
	}
	return (n + g - 1) / g * g
}

// chunkBucket rounds the number of tokens of a step up: powers of two up to 16, multiples of 16 up to
// 128 (a 65-token user input costs 80 rows, not 128), then powers of two again, so that XLA compiles few
// executables (each shape is a compilation of a second or more on the GPU).
func (r *Runner) chunkBucket(n int) int {
	switch {
	case n <= 16:
		return nextPow2(n)
	case n <= 128:
		return min((n+15)/16*16, r.opts.MaxChunk)
	}
	return min(nextPow2(n), r.opts.MaxChunk)
}

func nextPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

// Sequence is the state of one running sequence: its KV cache in two segments (see graph.go). It
// implements model.Sequence. A Sequence is used by one goroutine at a time.
type Sequence struct {
	r       *Runner
	ctx     *kvTensors // fixed context, read only once written
	ctxLen  int
	shared  bool          // ctx belongs to someone else (a cached prefix): never written or freed here
	sq      *squeezeIndex // the prefix's Squeezed Attention index (nil: dense)
	dyn     *kvTensors
	dynLen  int
	dynZero bool // dyn is the runner's shared zero buffer
	// pending tokens belong to the sequence but are not computed yet: they go before the next Append's
	// (a prefix's last context token).
	pending []int
	closed  bool
	lost    error // why the sequence was closed by a failed KV write (lose)
	greedy  bool  // AppendGreedy in progress: steps read only the argmax, into next
	next    int
	// DecodeGreedy's pipelining (decode.go): with keepNext, a greedy step leaves its argmax on the device
	// in nextDev instead of reading it into next; a non-nil tokIn is the next step's token, on the device.
	keepNext bool
	nextDev  *tensors.Tensor
	tokIn    *tensors.Tensor
	// keptStats are the squeezed steps' kept clustered keys (scalar int32 each, on the device; SqueezeKept).
	keptStats []*tensors.Tensor
}

var _ model.Sequence = (*Sequence)(nil)

// NewSequence starts an empty sequence.
func (r *Runner) NewSequence() *Sequence { return &Sequence{r: r} }

// Len is the number of tokens in the sequence.
func (s *Sequence) Len() int { return s.ctxLen + s.dynLen + len(s.pending) }

// MaxLen is the context limit.
func (s *Sequence) MaxLen() int { return s.r.maxLen }

// Close releases the sequence's device buffers.
func (s *Sequence) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.shared {
		s.ctx.finalize()
	}
	s.freeDyn()
	s.ctx = nil
	for _, t := range s.keptStats {
		t.FinalizeAll()
	}
	s.keptStats = nil
	return nil
}

// lose closes the sequence after a failed KV write freed part of its cache (errKVLost): later calls
// return err. With ctxFreed, writeKV freed what was left of the context's buffers (the write was into
// them); the rest is freed here.
func (s *Sequence) lose(err error, ctxFreed bool) {
	if ctxFreed && !s.shared {
		s.ctx = nil
	}
	s.Close()
	s.lost = err
}

// freeDyn releases the dynamic segment's buffers unless they are the runner's shared zeros.
func (s *Sequence) freeDyn() {
	if !s.dynZero {
		s.dyn.finalize()
	}
	s.dyn, s.dynZero = nil, false
}

// TakePending returns the tokens that belong to the sequence but are not computed yet (a prefix's last
// context token) and removes them, so the caller can feed them itself at the head of its next Append.
func (s *Sequence) TakePending() []int {
	p := s.pending
	s.pending = nil
	return p
}

// ErrClosed is returned when a closed sequence is used.
var ErrClosed = errors.New("llama: sequence is closed")

// Append feeds tokens and returns the logits after the last one.
func (s *Sequence) Append(ctx context.Context, tokens []int) ([]float32, error) {
	out, err := s.append(ctx, tokens, false)
	if err != nil {
		return nil, err
	}
	return out[len(out)-1], nil
}

// AppendGreedy feeds tokens and returns the most likely next token (ties go to the lowest id), chosen on
// the device: only the token id crosses to the host, not the vocabulary's logits (for a 128K vocabulary
// that copy costs more than a millisecond per token).
func (s *Sequence) AppendGreedy(ctx context.Context, tokens []int) (int, error) {
	s.greedy = true
	defer func() { s.greedy = false }()
	if _, err := s.append(ctx, tokens, false); err != nil {
		return 0, err
	}
	return s.next, nil
}

// AppendAllLogits feeds tokens and returns the logits at every one of their positions.
func (s *Sequence) AppendAllLogits(ctx context.Context, tokens []int) ([][]float32, error) {
	return s.append(ctx, tokens, true)
}

func (s *Sequence) append(ctx context.Context, tokens []int, allLogits bool) (logits [][]float32, err error) {
	if s.lost != nil {
		return nil, s.lost
	}
	if s.closed {
		return nil, ErrClosed
	}
	if len(tokens) == 0 {
		return nil, errors.New("llama: no tokens to append")
	}
	if s.Len()+len(tokens) > s.r.maxLen {
		return nil, fmt.Errorf("llama: %w: %d tokens in the sequence + %d new > %d", model.ErrContextTooLong,
			s.Len(), len(tokens), s.r.maxLen)
	}
	for _, t := range tokens {
		if t < 0 || t >= s.r.cfg.VocabSize {
			return nil, fmt.Errorf("llama: token id %d outside the vocabulary [0, %d)", t, s.r.cfg.VocabSize)
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("llama: step failed: %v", p)
		}
	}()
	if len(s.pending) > 0 {
		skip, before := len(s.pending), s.ctxLen+s.dynLen
		tokens = append(slices.Clone(s.pending), tokens...)
		s.pending = nil
		defer func() {
			if err != nil && s.ctxLen+s.dynLen == before {
				s.pending = tokens[:skip] // nothing was computed: the sequence is unchanged
			}
			if allLogits && len(logits) >= skip {
				logits = logits[skip:]
			}
		}()
	}
	// An empty sequence that owns its context prefills straight into the fixed-context segment; anything
	// after that goes to the dynamic segment. Prefilling into the context, the first chunk takes the
	// remainder (len mod MaxChunk) and the rest are whole chunks: the first chunk's step has no context
	// input, so its shape depends on its length alone, and every later step's on the context capacity
	// alone (a remainder last would compile one executable per pair of remainder bucket and capacity).
	intoCtx := s.Len() == 0 && !s.shared
	remainder := 0
	if intoCtx {
		remainder = len(tokens) % s.r.opts.MaxChunk
	}
	for len(tokens) > 0 {
		if err := ctx.Err(); err != nil {
			return logits, fmt.Errorf("llama: %w", err)
		}
		n := min(len(tokens), s.r.opts.MaxChunk)
		if remainder > 0 {
			n, remainder = remainder, 0
		}
		var out [][]float32
		if intoCtx {
			out, err = s.prefillChunk(tokens[:n], allLogits)
		} else {
			out, err = s.dynChunk(tokens[:n], allLogits)
		}
		if err != nil {
			return logits, err
		}
		if allLogits {
			logits = append(logits, out...)
		} else {
			logits = out
		}
		tokens = tokens[n:]
	}
	return logits, nil
}

// prefillChunk runs n tokens attending to the fixed context and appends their keys/values to it.
func (s *Sequence) prefillChunk(tokens []int, allLogits bool) ([][]float32, error) {
	r := s.r
	nb := r.chunkBucket(len(tokens))
	logits, chunk, err := s.step(tokens, nb, s.ctx, s.ctxLen, nil, 0, allLogits)
	if err != nil {
		return nil, err
	}
	dst, own := s.ctx, s.ctx != nil
	if !own {
		dst = r.zeroKV(r.ctxCapacity(1)) // read only: writeKV returns a new buffer
	}
	newCtx, err := r.writeKV(dst, chunk, s.ctxLen, len(tokens), r.ctxCapacity(s.ctxLen+len(tokens)), own, true)
	if err != nil {
		if errors.Is(err, errKVLost) {
			s.lose(err, true)
		} else {
			chunk.finalize()
		}
		return nil, err
	}
	s.ctx = newCtx
	s.ctxLen += len(tokens)
	return logits, nil
}

// dynChunk runs n tokens into the dynamic segment, making room first.
func (s *Sequence) dynChunk(tokens []int, allLogits bool) ([][]float32, error) {
	r := s.r
	nb := r.chunkBucket(len(tokens))
	if s.dynLen+nb > s.dyn.capacity() {
		if !s.shared && s.dynLen > 0 {
			// Fold the dynamic segment into our own context so the per-step rewrite stays small.
			newCtx, err := r.writeKV(s.ctx, s.dyn, s.ctxLen, s.dynLen, r.ctxCapacity(s.ctxLen+s.dynLen), true, false)
			if err != nil {
				if errors.Is(err, errKVLost) {
					s.lose(err, true)
				}
				return nil, err
			}
			s.ctx, s.ctxLen = newCtx, s.ctxLen+s.dynLen
			s.dynLen = 0
		}
		need := s.dynLen + nb
		capacity := (need + r.opts.DynBlock - 1) / r.opts.DynBlock * r.opts.DynBlock
		if s.dynLen == 0 {
			s.freeDyn()
			s.dyn, s.dynZero = r.zeroKV(capacity), true // read-only zeros: a step never writes its inputs
		} else {
			grown, err := r.writeKV(s.dyn, s.dyn, 0, 0, capacity, !s.dynZero, false)
			if err != nil {
				if errors.Is(err, errKVLost) {
					s.dyn = nil // freed by writeKV
					s.lose(err, false)
				}
				return nil, err
			}
			s.dyn, s.dynZero = grown, false
		}
	}
	if s.ctx == nil {
		s.ctx = r.newKV(r.ctxCapacity(1))
	}
	logits, newDyn, err := s.step(tokens, nb, s.ctx, s.ctxLen, s.dyn, s.dynLen, allLogits)
	if err != nil {
		return nil, err
	}
	s.freeDyn()
	s.dyn = newDyn
	s.dynLen += len(tokens)
	return logits, nil
}

// step executes one compiled forward step over len(tokens) tokens padded to nb.
func (s *Sequence) step(tokens []int, nb int, ctxKV *kvTensors, ctxLen int, dynKV *kvTensors, dynLen int,
	allLogits bool) ([][]float32, *kvTensors, error) {
	r := s.r
	c := r.cfg
	packed := make([]int32, nb+numScalars)
	for i, t := range tokens {
		packed[i] = int32(t)
	}
	packed[nb], packed[nb+1], packed[nb+2] = int32(ctxLen), int32(dynLen), int32(len(tokens))
	if s.sq != nil {
		packed[nb+3], packed[nb+4], packed[nb+5] = int32(s.sq.clustered), int32(s.sq.window), int32(s.sq.budget)
	}
	maxPos := ctxLen + dynLen + len(tokens) - 1
	args := make([]any, 0, len(r.weights.Tensors)+2+4*c.NumHiddenLayers)
	for _, t := range r.weights.Tensors {
		args = append(args, t)
	}
	invFreq, err := r.invFreq(maxPos)
	if err != nil {
		return nil, nil, err
	}
	args = append(args, invFreq, packed)
	if ctxKV != nil {
		for _, t := range append(slices.Clone(ctxKV.k), ctxKV.v...) {
			args = append(args, t)
		}
	}
	if dynKV != nil {
		for _, t := range append(slices.Clone(dynKV.k), dynKV.v...) {
			args = append(args, t)
		}
	}
	deviceToken := s.tokIn != nil
	if deviceToken && (len(tokens) != 1 || dynKV == nil || ctxKV == nil || allLogits) {
		return nil, nil, errors.New("llama: a device token feeds only a one-token decode step")
	}
	large := nb > graphRows
	exec := r.steps[stepKind{allLogits: allLogits, prefill: dynKV == nil, hasCtx: ctxKV != nil, deviceToken: deviceToken, large: large}]
	if s.sq != nil && ctxKV == s.ctx {
		// A fresh dynamic segment compiles its own step only where it changes the graph (fused attention).
		fresh := dynKV != nil && dynLen == 0 && !r.opts.NoFusedAttention && testFreshDyn >= 0 &&
			(r.backend.Capabilities().Operations[compute.OpTypeFusedScaledDotProductAttention] || testFreshDyn > 0)
		if exec, err = r.stepExecSqueezed(s.sq, allLogits, deviceToken, large, fresh); err != nil {
			return nil, nil, err
		}
		for l := range c.NumHiddenLayers {
			for _, t := range s.sq.layerInputs(l) {
				args = append(args, t)
			}
		}
		if s.sq.calibrated() {
			args = append(args, s.sq.threshold)
		}
	}
	if deviceToken {
		args = append(args, s.tokIn)
	}
	t0 := time.Now()
	out, err := exec.Call(args...)
	if err != nil {
		return nil, nil, fmt.Errorf("llama: step over %d tokens: %w", len(tokens), err)
	}
	if trace {
		defer func(t1 time.Time) {
			fmt.Fprintf(os.Stderr, "trace: step n=%d (bucket %d) ctx=%d/%d dyn=%d/%d: call %v, logits to host %v\n",
				len(tokens), nb, ctxLen, ctxKV.capacity(), dynLen, dynKV.capacity(), t1.Sub(t0), time.Since(t1))
		}(time.Now())
	}
	L := c.NumHiddenLayers
	newDyn := &kvTensors{k: out[2 : 2+L], v: out[2+L : 2+2*L]}
	if len(out) > 2+2*L { // a squeezed step's kept keys, read when asked (SqueezeKept): no wait here
		s.keptStats = append(s.keptStats, out[2+2*L])
	}
	defer out[0].FinalizeAll()
	if s.greedy && !allLogits && s.keepNext {
		if s.nextDev != nil { // an earlier chunk's of the same append: only the last one's is wanted
			s.nextDev.FinalizeAll()
		}
		s.nextDev = out[1] // the caller reads it (or feeds it to the next step) later
		return [][]float32{nil}, newDyn, nil
	}
	defer out[1].FinalizeAll()
	if s.greedy && !allLogits {
		next, err := tensors.CopyFlatData[int32](out[1])
		if err != nil {
			newDyn.finalize()
			return nil, nil, err
		}
		s.next = int(next[0])
		return [][]float32{nil}, newDyn, nil
	}
	flat, err := tensors.CopyFlatData[float32](out[0])
	if err != nil {
		newDyn.finalize()
		return nil, nil, err
	}
	var logits [][]float32
	if allLogits {
		for i := range tokens {
			logits = append(logits, flat[i*c.VocabSize:(i+1)*c.VocabSize])
		}
	} else {
		logits = [][]float32{flat}
	}
	return logits, newDyn, nil
}

// invFreq returns the RoPE inverse frequencies for a step reaching maxPos, kept on the device: they
// change with the position only for the "dynamic" scaling type.
func (r *Runner) invFreq(maxPos int) (*tensors.Tensor, error) {
	if r.cfg.RoPE.Type != "dynamic" || maxPos < r.cfg.RoPE.OriginalMaxPositionEmbeddings {
		maxPos = 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.invFreqs == nil {
		r.invFreqs = map[int]*tensors.Tensor{}
	}
	if t, ok := r.invFreqs[maxPos]; ok {
		return t, nil
	}
	t := tensors.FromValue(r.cfg.InvFreq(maxPos))
	if err := t.MaterializeOnDevice(r.backend, false, 0); err != nil {
		return nil, err
	}
	if len(r.invFreqs) > 64 { // dynamic scaling: one per position; keep the map bounded
		for k, old := range r.invFreqs {
			if k != 0 {
				old.FinalizeAll()
				delete(r.invFreqs, k)
			}
		}
	}
	r.invFreqs[maxPos] = t
	return t, nil
}

// writeKV writes src rows [0, count) at dst rows [off, off+count), into new buffers of the given
// capacity, one layer's keys or values at a time. With freeDst (freeSrc), dst's (src's) buffers are freed
// as soon as their layer is written: the caller owns them and drops them after the call. So the peak
// holds the caches and one layer's new buffer, not two whole caches: before session 12 one executable
// wrote every layer, and LLaMA-2-7B's prefill of 130,000 tokens on an H200 needed about 154 GB at its
// last chunk's write (68 GB of old cache, 72 of new, the chunk and the weights) and ran out of memory.
// If a write fails after a buffer was freed, writeKV frees what is left of both and returns an error
// wrapping errKVLost: the caller's cache is gone.
func (r *Runner) writeKV(dst, src *kvTensors, off, count, capacity int, freeDst, freeSrc bool) (*kvTensors, error) {
	e, err := r.writeExec(capacity)
	if err != nil {
		return nil, err
	}
	dstAll, srcAll := append(slices.Clone(dst.k), dst.v...), append(slices.Clone(src.k), src.v...)
	out := make([]*tensors.Tensor, len(dstAll))
	freed := false
	for i := range dstAll {
		var res []*tensors.Tensor
		if err = writeKVFault(i); err == nil {
			res, err = e.Call(dstAll[i], srcAll[i], int32(off), int32(count))
		}
		if err != nil {
			err = fmt.Errorf("llama: writing KV cache (layer %d's %s of %d): %w", i%len(dst.k),
				map[bool]string{true: "keys", false: "values"}[i < len(dst.k)], len(dst.k), err)
			if !freed {
				for _, t := range out[:i] {
					t.FinalizeAll()
				}
				return nil, err
			}
			for j := range dstAll {
				if j < i {
					out[j].FinalizeAll()
				}
				if j >= i && freeDst {
					dstAll[j].FinalizeAll()
				}
				if j >= i && freeSrc && srcAll[j] != dstAll[j] {
					srcAll[j].FinalizeAll()
				}
			}
			return nil, fmt.Errorf("%w: %w", errKVLost, err)
		}
		out[i] = res[0]
		if freeDst {
			dstAll[i].FinalizeAll()
			freed = true
		}
		if freeSrc && srcAll[i] != dstAll[i] {
			srcAll[i].FinalizeAll()
			freed = true
		}
	}
	L := len(dst.k)
	return &kvTensors{k: out[:L], v: out[L:]}, nil
}

// errKVLost: a KV write failed after it freed buffers of the sequence's cache (writeKV).
var errKVLost = errors.New("llama: the sequence's KV cache was lost; start a new sequence")

// writeKVFault, for tests, fails writeKV's i-th buffer write when it returns an error.
var writeKVFault = func(i int) error { return nil }

// WeightBytes is the size of the weights on the device.
func (r *Runner) WeightBytes() int64 {
	var n int64
	for _, t := range r.weights.Tensors {
		n += int64(t.Shape().Memory())
	}
	return n
}

// DecodeStepBytes is the memory traffic of a decode step that must happen with this cache layout: every
// weight read once (the embedding only for one row when it is not also the LM head), the valid context
// rows' keys and values read, and the dynamic segment (capacity dynCap) read and written whole, since
// the step returns new dyn buffers. The roofline time of the step is this over the memory bandwidth.
func (r *Runner) DecodeStepBytes(ctxRows, dynCap int) int64 {
	c := r.cfg
	elem := int64(r.weights.DType.Size())
	n := r.WeightBytes()
	if !c.TieWordEmbeddings {
		n -= int64(c.VocabSize-1) * int64(c.HiddenSize) * elem
	}
	row := 2 * int64(c.NumHiddenLayers) * int64(c.NumKeyValueHeads) * int64(c.HeadDim) * elem // K and V, all layers
	return n + int64(ctxRows)*row + 2*int64(dynCap)*row
}

// PrefillFLOPs is the arithmetic of a prefill of n tokens from an empty sequence: 2 FLOPs per weight
// per token in the projections (the LM head for the last token only) plus causal attention
// (QKᵀ and PV, 2·n²/2·headDim·heads each, per layer).
func (r *Runner) PrefillFLOPs(n int) float64 {
	c := r.cfg
	h, hd, kvh := float64(c.HiddenSize), float64(c.HeadDim), float64(c.NumKeyValueHeads)
	qh, inter := float64(c.NumAttentionHeads), float64(c.IntermediateSize)
	perLayer := h*qh*hd + 2*h*kvh*hd + qh*hd*h + 3*h*inter // q, k+v, o, gate+up+down
	tokens := float64(n)
	return 2*tokens*perLayer*float64(c.NumHiddenLayers) + 2*h*float64(c.VocabSize) +
		2*tokens*tokens*hd*qh*float64(c.NumHiddenLayers)
}
