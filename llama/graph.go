package llama

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"

	"github.com/squeezeai/sqllm/squeeze"
)

// The forward pass as graph functions. A step processes n new tokens (a prefill chunk or one decode
// token) of one sequence. Its keys are split in two segments, so that a long, read-only prefix never has
// to be rewritten:
//
//   - ctx: the fixed context (prefilled prompt or cached prefix) [numKVHeads, ctxCap, headDim] per
//     layer, of which the first ctxLen rows are valid. Read only.
//   - dyn: the dynamic tail (user input and generated tokens) [numKVHeads, dynCap, headDim] per layer,
//     of which dynLen rows are valid. The step writes its n new keys/values at rows [dynLen, dynLen+n)
//     and returns the new dyn tensors.
//
// A prefill step has no dyn input: its dyn segment is its own n keys/values, returned as they are (the
// runner copies them into the context). The first prefill step of a sequence has no ctx input either.
//
// Positions: ctx rows hold positions 0..ctxLen-1, dyn rows ctxLen..ctxLen+dynLen-1, so the step's first
// token is at position ctxLen+dynLen. Attention is exact softmax over both segments (masked), so the
// result equals ordinary causal attention over the whole sequence.

// maskedScore is the score of a masked key: exp underflows to exactly 0 in float32.
const maskedScore = -1e30

// layerNodes are one decoder layer's weights inside a graph, in the runner's packed layout (packWeights):
// the q, k and v projections are one [q+2·kv, hidden] matrix and gate and up one [2·intermediate, hidden]
// matrix (transposed, like o and down, on backends that take [in, out]: transposedProjections), so that a step reads them in one product each (XLA runs fewer, larger kernels: a 7B-shape
// decode step's products went from 4.7 to 4.5 ms, an 80-row step's from 6.6 to 5.7 ms on an H200).
type layerNodes struct {
	inNorm, qkv, o, postNorm, gateUp, down *Node
	qkvBias, oBias, gateUpBias, downBias   *Node // nil when absent
}

// modelNodes are the model's weights inside a graph.
type modelNodes struct {
	embed, norm, lmHead *Node
	layers              []layerNodes
}

// unpackWeights splits the flat weight inputs (in the packed order of packedWeightCount) into named
// nodes.
func unpackWeights(c *Config, in []*Node) modelNodes {
	var m modelNodes
	m.embed, m.norm = in[0], in[1]
	i := 2
	if c.TieWordEmbeddings {
		m.lmHead = m.embed
	} else {
		m.lmHead = in[2]
		i = 3
	}
	next := func() *Node { i++; return in[i-1] }
	for range c.NumHiddenLayers {
		var l layerNodes
		l.inNorm, l.qkv, l.o, l.postNorm, l.gateUp, l.down = next(), next(), next(), next(), next(), next()
		if c.AttentionBias {
			l.qkvBias = next()
		}
		if c.AttentionOutBias {
			l.oBias = next()
		}
		if c.MLPBias {
			l.gateUpBias, l.downBias = next(), next()
		}
		m.layers = append(m.layers, l)
	}
	return m
}

// projectQKV is the attention block's input projections: queries [n, numHeads, headDim] and keys and
// values [n, numKVHeads, headDim], before RoPE.
func projectQKV(c *Config, w layerNodes, h *Node) (q, k, v *Node) {
	n, hd := h.Shape().Dimensions[0], c.HeadDim
	nq, nkv := c.NumAttentionHeads*hd, c.NumKeyValueHeads*hd
	qkv := linear(h, w.qkv, w.qkvBias) // [n, nq+2·nkv]
	q = Reshape(Slice(qkv, AxisRange(), AxisRange(0, nq)), n, c.NumAttentionHeads, hd)
	k = Reshape(Slice(qkv, AxisRange(), AxisRange(nq, nq+nkv)), n, c.NumKeyValueHeads, hd)
	v = Reshape(Slice(qkv, AxisRange(), AxisRange(nq+nkv, nq+2*nkv)), n, c.NumKeyValueHeads, hd)
	return q, k, v
}

// mlp is the SwiGLU block: down(silu(gate(h)) · up(h)).
func mlp(c *Config, w layerNodes, h *Node) *Node {
	i := c.IntermediateSize
	gu := linear(h, w.gateUp, w.gateUpBias) // [n, 2·intermediate]
	gate, up := Slice(gu, AxisRange(), AxisRange(0, i)), Slice(gu, AxisRange(), AxisRange(i, 2*i))
	return linear(Mul(silu(gate), up), w.down, w.downBias)
}

// stepInputs are the non-weight inputs of a step.
type stepInputs struct {
	invFreq            *Node          // [headDim/2] float32
	tokens             *Node          // [n] int32
	ctxLen, dynLen     *Node          // scalar int32
	nValid             *Node          // scalar int32: tokens[nValid:] are padding
	ctxK, ctxV         []*Node        // per layer [numKVHeads, ctxCap, headDim]; nil: no fixed context yet
	dynK, dynV         []*Node        // per layer [numKVHeads, dynCap, headDim]; nil: a prefill step
	allLogits          bool           // static: logits for every position, else only for row nValid-1
	fused              bool           // static: try the backend's fused attention (see fusedAttention)
	squeeze            *squeezeInputs // nil: dense attention over the fixed context
	numWeights, layers int
}

// forward builds one step. It returns the logits (float32, [vocab] or [n, vocab] with allLogits) and the
// updated dyn keys and values.
func forward(c *Config, w modelNodes, s stepInputs) (logits *Node, dynK, dynV []*Node) {
	g := s.tokens.Graph()
	dtype := w.embed.DType()
	n := s.tokens.Shape().Dimensions[0]
	start := Add(s.ctxLen, s.dynLen) // position of tokens[0]

	x := Gather(w.embed, ExpandAxes(s.tokens, -1)) // [n, hidden]
	positions := Add(Iota(g, shapes.Make(dtypes.Int32, n), 0), start)
	cos, sin := ropeTables(positions, s.invFreq, dtype) // [n, 1, headDim]
	ctxMask, dynMask := attentionMasks(c, positions, s) // [n, ctxCap], [n, dynCap]

	dynK, dynV = make([]*Node, c.NumHiddenLayers), make([]*Node, c.NumHiddenLayers)
	at := func(ts []*Node, l int) *Node {
		if ts == nil {
			return nil
		}
		return ts[l]
	}
	for l, lw := range w.layers {
		var sq *squeezeLayer
		if s.squeeze != nil {
			sq = &s.squeeze.layers[l]
		}
		seg := layerKV{ctxK: at(s.ctxK, l), ctxV: at(s.ctxV, l), dynK: at(s.dynK, l), dynV: at(s.dynV, l),
			ctxLen: s.ctxLen, dynLen: s.dynLen, ctxMask: ctxMask, dynMask: dynMask, fused: s.fused}
		x, dynK[l], dynV[l] = decoderLayer(c, lw, x, cos, sin, seg, sq)
	}
	x = rmsNorm(x, w.norm, c.RMSNormEps) // [n, hidden]
	if !s.allLogits {
		last := Reshape(Sub(s.nValid, Scalar(g, dtypes.Int32, 1)), 1, 1)
		x = Gather(x, last) // [1, hidden]
	}
	logits = ConvertDType(einsum("nh,vh->nv", x, w.lmHead), dtypes.Float32) // [n or 1, vocab]
	if !s.allLogits {
		logits = Reshape(logits, c.VocabSize) // [vocab]
	}
	return logits, dynK, dynV
}

// layerKV is what one layer's attention reads: the two KV segments (either may be nil, see stepInputs),
// their lengths and masks.
type layerKV struct {
	ctxK, ctxV, dynK, dynV *Node
	ctxLen, dynLen         *Node
	ctxMask, dynMask       *Node
	fused                  bool
}

// decoderLayer is one transformer block, in the order of the paper:
// norm → q/k/v → RoPE → attention → o → residual → norm → SwiGLU → residual.
func decoderLayer(c *Config, w layerNodes, x, cos, sin *Node, kv layerKV, sq *squeezeLayer) (
	out, newDynK, newDynV *Node) {
	// Attention block.
	h := rmsNorm(x, w.inNorm, c.RMSNormEps)               // [n, hidden]
	q, k, v := projectQKV(c, w, h)                        // [n, heads, headDim]
	q, k = applyRoPE(q, cos, sin), applyRoPE(k, cos, sin) // keys are cached post-RoPE
	kT, vT := Transpose(k, 0, 1), Transpose(v, 0, 1)      // [numKVHeads, n, headDim]
	newDynK, newDynV = kT, vT                             // a prefill step: the dyn segment is the chunk itself
	if kv.dynK != nil {
		newDynK, newDynV = writeRows(kv.dynK, kT, kv.dynLen, nil), writeRows(kv.dynV, vT, kv.dynLen, nil) // [numKVHeads, dynCap, headDim]
	}
	var attn *Node // [n, numHeads*headDim]
	switch {
	case sq != nil:
		attn = squeezedAttention(c, q, kv.ctxK, kv.ctxV, newDynK, newDynV, kv.dynMask, sq)
	case kv.fused:
		attn = fusedAttention(c, q, kT, vT, kv)
	}
	if attn == nil {
		attn = attentionSegments(c, q, []segment{{kv.ctxK, kv.ctxV, kv.ctxMask}, {newDynK, newDynV, kv.dynMask}})
	}
	x = Add(x, linear(attn, w.o, w.oBias)) // residual

	// MLP block (SwiGLU).
	x = Add(x, mlp(c, w, rmsNorm(x, w.postNorm, c.RMSNormEps)))
	return x, newDynK, newDynV
}

// rmsNorm normalises the last axis in float32 and scales by weight, as transformers' LlamaRMSNorm:
// weight * (x / sqrt(mean(x²) + eps)).to(dtype).
func rmsNorm(x, weight *Node, eps float64) *Node {
	dtype := x.DType()
	xf := ConvertDType(x, dtypes.Float32)
	variance := ReduceAndKeep(Square(xf), ReduceMean, -1)
	y := Mul(xf, Rsqrt(AddScalar(variance, eps)))
	return Mul(ConvertDType(y, dtype), ExpandLeftToRank(weight, x.Rank()))
}

// linear is x·Wᵀ (+ b) with W in Hugging Face's [out, in] layout, or x·W with W in [in, out] layout on the
// backends whose weights packWeights transposes (transposedProjections).
func linear(x, w, b *Node) *Node {
	eq := "ni,oi->no"
	if transposedProjections(x.Graph().Backend()) {
		eq = "ni,io->no"
	}
	y := einsum(eq, x, w) // [n, out]
	if b != nil {
		y = Add(y, ExpandLeftToRank(b, 2))
	}
	return y
}

// einsum is graph.Einsum, except that on the pure-Go backend bfloat16 operands are multiplied in float32
// (then rounded back to bfloat16, as GPUs accumulate bf16 products in f32): GoMLX compute v0.1.6's AVX2
// bfloat16 matmul kernels return wrong results for single-row and batched products.
func einsum(equation string, lhs, rhs *Node) *Node {
	if lhs.DType() != dtypes.BFloat16 || lhs.Graph().Backend().String() != "go" {
		return Einsum(equation, lhs, rhs)
	}
	out := Einsum(equation, ConvertDType(lhs, dtypes.Float32), ConvertDType(rhs, dtypes.Float32))
	return ConvertDType(out, dtypes.BFloat16)
}

// silu is x·sigmoid(x).
func silu(x *Node) *Node { return Mul(x, Sigmoid(x)) }

// ropeTables returns cos and sin of position×inv_freq, duplicated over both halves of the head dim as
// transformers does, computed in float32 and cast to dtype. Shapes [n, 1, headDim].
func ropeTables(positions, invFreq *Node, dtype dtypes.DType) (cos, sin *Node) {
	n := positions.Shape().Dimensions[0]
	half := invFreq.Shape().Dimensions[0]
	pos := Reshape(ConvertDType(positions, dtypes.Float32), n, 1)
	freqs := Mul(pos, Reshape(invFreq, 1, half))  // [n, headDim/2]
	emb := Concatenate([]*Node{freqs, freqs}, -1) // [n, headDim]
	emb = Reshape(emb, n, 1, 2*half)
	return ConvertDType(Cos(emb), dtype), ConvertDType(Sin(emb), dtype)
}

// applyRoPE rotates x [n, heads, headDim]: x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1].
func applyRoPE(x, cos, sin *Node) *Node {
	hd := x.Shape().Dimensions[2]
	x1 := Slice(x, AxisRange(), AxisRange(), AxisRange(0, hd/2))
	x2 := Slice(x, AxisRange(), AxisRange(), AxisRange(hd/2, hd))
	rotated := Concatenate([]*Node{Neg(x2), x1}, -1)
	return Add(Mul(x, cos), Mul(rotated, sin))
}

// attentionMasks says which keys each query may attend: ctx rows below ctxLen, dyn rows up to the
// query's own position (causal), and, with a sliding window, only keys less than the window behind.
func attentionMasks(c *Config, positions *Node, s stepInputs) (ctxMask, dynMask *Node) {
	g := positions.Graph()
	n := positions.Shape().Dimensions[0]
	dynCap := n // a prefill step's dyn segment is its own tokens
	if s.dynK != nil {
		dynCap = s.dynK[0].Shape().Dimensions[1]
	}
	qPos := Reshape(positions, n, 1) // [n, 1]

	var ctxPos *Node
	if s.ctxK != nil {
		ctxCap := s.ctxK[0].Shape().Dimensions[1]
		ctxPos = Reshape(Iota(g, shapes.Make(dtypes.Int32, ctxCap), 0), 1, ctxCap) // [1, ctxCap]
		ctxMask = BroadcastToDims(LessThan(ctxPos, s.ctxLen), n, ctxCap)           // [n, ctxCap]
	}

	dynRow := Reshape(Iota(g, shapes.Make(dtypes.Int32, dynCap), 0), 1, dynCap) // [1, dynCap]
	dynPos := Add(dynRow, Add(s.ctxLen, ZerosLike(dynRow)))                     // absolute positions
	dynMask = LessOrEqual(dynPos, qPos)                                         // [n, dynCap] causal
	if c.SlidingWindow > 0 {
		w := Scalar(g, dtypes.Int32, c.SlidingWindow)
		if ctxMask != nil {
			ctxMask = And(ctxMask, LessThan(Sub(qPos, ctxPos), w))
		}
		dynMask = And(dynMask, LessThan(Sub(qPos, dynPos), w))
	}
	return ctxMask, dynMask
}

// attention is grouped-query attention of q [n, numHeads, headDim] over the ctx and dyn segments
// ([numKVHeads, capacity, headDim] each), one softmax over both. Returns [n, numHeads*headDim].
func attention(c *Config, q, ctxK, ctxV, dynK, dynV, ctxMask, dynMask *Node) *Node {
	return attentionSegments(c, q, []segment{{ctxK, ctxV, ctxMask}, {dynK, dynV, dynMask}})
}

// segment is a run of keys and values [numKVHeads, capacity, headDim] with the mask [n, capacity] of
// which of them each query attends. A segment with nil keys is absent.
type segment struct{ k, v, mask *Node }

// attentionSegments is grouped-query attention of q [n, numHeads, headDim] over several KV segments,
// one exact softmax over all of them (the decomposed graph every backend runs). Returns
// [n, numHeads*headDim].
func attentionSegments(c *Config, q *Node, segs []segment) *Node {
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	dtype := q.DType()
	scale := 1 / math.Sqrt(float64(hd))

	// The query heads sharing a KV head become rows of one product: [numKVHeads, n*group, headDim].
	qg := TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3)
	qg = Reshape(qg, kvh, n*group, hd)
	var scores, masks []*Node
	var present []segment
	for _, sg := range segs {
		if sg.k == nil {
			continue
		}
		present = append(present, sg)
		scores = append(scores, MulScalar(einsum("kqd,kpd->kqp", qg, sg.k), scale)) // [numKVHeads, n*group, capacity]
		masks = append(masks, sg.mask)
	}
	all := ConvertDType(Concatenate(scores, -1), dtypes.Float32)
	total := all.Shape().Dimensions[2]
	mask := Concatenate(masks, -1) // [n, total]
	mask = BroadcastToDims(Reshape(mask, 1, n, 1, total), kvh, n, group, total)
	mask = Reshape(mask, kvh, n*group, total)
	all = Where(mask, all, Scalar(all.Graph(), dtypes.Float32, maskedScore))
	probs := ConvertDType(Softmax(all, -1), dtype) // [numKVHeads, n*group, total]
	var out *Node
	off := 0
	for _, sg := range present {
		capacity := sg.k.Shape().Dimensions[1]
		p := Slice(probs, AxisRange(), AxisRange(), AxisRange(off, off+capacity))
		off += capacity
		o := weightValues(p, sg.v) // [numKVHeads, n*group, headDim]
		if out == nil {
			out = o
		} else {
			out = Add(out, o)
		}
	}
	out = TransposeAllAxes(Reshape(out, kvh, n, group, hd), 1, 0, 2, 3) // [n, numKVHeads, group, headDim]
	return Reshape(out, n, c.NumAttentionHeads*hd)
}

// splitKRows is the chunk of keys per partial sum in weightValues' split form.
const splitKRows = 256

// testSplitK makes weightValues use its split form on the pure-Go backend too (tests).
var testSplitK bool

// noSplitK turns weightValues' split form and fusedAttention's cut context (ctxPieces) off
// (SQLLM_NO_SPLITK=1), for measuring what they gain.
var noSplitK = os.Getenv("SQLLM_NO_SPLITK") != ""

// The squeezed path's attention products split the same way (squeeze.SplitKValues), and off with them.
// SQLLM_SQUEEZE_PASSES=1 makes the squeezed selection search its boundary in passes on accelerators too
// (squeeze.NoAllPairs); SQLLM_SQUEEZE_SEARCH=passes|allpairs|sort picks the search (squeeze.Search) for
// measuring them. SQLLM_SQUEEZE_PAGED picks when a decode step's kept keys go through the paged Triton kernel
// (squeeze.Paged): 1 wherever there is one, 0 never, unset for up to squeeze.PagedAutoMaxQueries query rows per
// KV head on a backend that passed squeeze.ProbePaged (see squeeze/paged.go). SQLLM_SQUEEZE_PAGEDSEG picks when such a
// decode step attends its dynamic segment in the paged kernel's launch (squeeze.PagedSeg): 1 wherever there is a
// kernel, 0 never, unset for up to squeeze.PagedSegAutoMaxQueries query rows per KV head on a backend that passed
// squeeze.ProbePagedSeg; SQLLM_SQUEEZE_SEGMERGE=0 merges its splits with XLA's ops instead of the merge kernel
// (squeeze.NoMergeKernel), for measuring. SQLLM_SQUEEZE_SELECT picks when the selection (boundary and
// kept list) runs in the two selection Triton kernels (squeeze.SelectKernels): 1 wherever there are kernels, 0
// never (XLA's selection, whose boundary search SQLLM_SQUEEZE_SEARCH picks), unset on a backend that passed
// squeeze.ProbeSelect (see squeeze/selectk.go). SQLLM_SQUEEZE_SCORES picks when a user input's cluster scores
// run in the two cluster-score Triton kernels (squeeze.ScoresKernels): 1 wherever there are kernels, 0 never, unset
// on a backend that passed squeeze.ProbeScores (see squeeze/scoresk.go). SQLLM_SQUEEZE_LOOKUP picks when a decode
// step's cluster scores and boundary run in the lookup Triton kernel (squeeze.LookupKernel): 1 wherever there is a
// kernel (with the selection kernels), 0 never (XLA's scores, then kernel A), unset on a backend that passed
// squeeze.ProbeLookup (see squeeze/lookupk.go). SQLLM_SCORES_P=blocks runs the cluster scores' second kernel by
// centroid blocks (session 17's kernel P) instead of by row blocks (squeeze.ScoresPByBlocks), for measuring.
// SQLLM_KERNEL_DIR names a directory of kernel configs that replace or add to the embedded ones (squeeze.KernelDir),
// for measuring a kernel on the GPU machine before it is embedded.
func init() {
	squeeze.NoSplitK = noSplitK
	squeeze.NoAllPairs = os.Getenv("SQLLM_SQUEEZE_PASSES") != ""
	squeeze.Paged = envChoice("SQLLM_SQUEEZE_PAGED", map[string]squeeze.PagedMode{"": squeeze.PagedAuto, "1": squeeze.PagedOn,
		"0": squeeze.PagedOff})
	squeeze.PagedSeg = envChoice("SQLLM_SQUEEZE_PAGEDSEG", map[string]squeeze.PagedMode{"": squeeze.PagedAuto, "1": squeeze.PagedOn,
		"0": squeeze.PagedOff})
	squeeze.NoMergeKernel = envChoice("SQLLM_SQUEEZE_SEGMERGE", map[string]bool{"": false, "1": false, "0": true})
	squeezeSearch = envChoice("SQLLM_SQUEEZE_SEARCH", map[string]squeeze.Search{"": squeeze.SearchAuto,
		"passes": squeeze.SearchPasses, "allpairs": squeeze.SearchAllPairs, "sort": squeeze.SearchSort})
	squeeze.SelectKernels = envChoice("SQLLM_SQUEEZE_SELECT", map[string]squeeze.SelectMode{"": squeeze.SelectAuto,
		"1": squeeze.SelectOn, "0": squeeze.SelectOff})
	squeeze.ScoresKernels = envChoice("SQLLM_SQUEEZE_SCORES", map[string]squeeze.SelectMode{"": squeeze.SelectAuto,
		"1": squeeze.SelectOn, "0": squeeze.SelectOff})
	squeeze.LookupKernel = envChoice("SQLLM_SQUEEZE_LOOKUP", map[string]squeeze.SelectMode{"": squeeze.SelectAuto,
		"1": squeeze.SelectOn, "0": squeeze.SelectOff})
	squeeze.ScoresPByBlocks = envChoice("SQLLM_SCORES_P", map[string]bool{"": false, "rows": false, "blocks": true})
	squeeze.KernelDir = envDir("SQLLM_KERNEL_DIR")
	if v := os.Getenv("SQLLM_SCORES_SPLITS"); v != "" {
		if o, ok := parseSplits(v); ok {
			squeeze.ScoresSplitsOverride = o
		} else {
			fmt.Fprintf(os.Stderr, "llama: ignoring SQLLM_SCORES_SPLITS=%q: not two integers ks,ms ≥ 0\n", v)
		}
	}
}

// parseSplits reads SQLLM_SCORES_SPLITS' "ks,ms": the cluster-score kernels' splits (squeeze.ScoresSplitsOverride;
// 0 keeps the computed one).
func parseSplits(v string) ([2]int, bool) {
	a, b, found := strings.Cut(v, ",")
	ks, err1 := strconv.Atoi(strings.TrimSpace(a))
	ms, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !found || err1 != nil || err2 != nil || ks < 0 || ms < 0 {
		return [2]int{}, false
	}
	return [2]int{ks, ms}, true
}

// envChoice is the value the environment variable name selects among choices (the key "" is the default). A value
// it does not know is named on stderr, with the ones it knows, and the default is used.
func envChoice[T any](name string, choices map[string]T) T {
	v := os.Getenv(name)
	if c, ok := choices[v]; ok {
		return c
	}
	known := slices.Sorted(maps.Keys(choices))
	fmt.Fprintf(os.Stderr, "llama: ignoring %s=%q: not one of %q (unset: the default)\n", name, v, known[1:])
	return choices[""]
}

// squeezeSearch is the squeezed selection's boundary search (SQLLM_SQUEEZE_SEARCH; zero: squeeze.SearchAuto).
var squeezeSearch squeeze.Search

// weightValues is probs [numKVHeads, rows, capacity] · values [numKVHeads, capacity, headDim] (in the
// probabilities' dtype). For a decode step on XLA (few query rows, a long segment) it is computed in split
// form: partial sums over chunks of splitKRows keys (float32), then their sum. As one product, XLA reduces
// each head's whole segment in one thread block, so only numKVHeads blocks run: on an H100, LLaMA-2-7B at a
// 4K context, that kernel read the values at 1.6 TB/s (21 µs per layer), against 2.5-3.1 TB/s for the
// step's other large kernels, and the gap grows with the context.
func weightValues(probs, values *Node) *Node {
	rows, capacity := probs.Shape().Dimensions[1], probs.Shape().Dimensions[2]
	goBackend := probs.Graph().Backend().String() == "go"
	if noSplitK || rows > 16 || capacity%splitKRows != 0 || capacity < 4*splitKRows || (goBackend && !testSplitK) {
		return einsum("kqp,kpd->kqd", probs, values)
	}
	return ConvertDType(squeeze.SplitKValues(probs, values, splitKRows), probs.DType())
}

// ctxPieceRows is the smallest piece of the fixed context in fusedAttention's split form (a package
// variable so that a test can make small contexts split).
var ctxPieceRows = 2048

// ctxPieces is how many pieces fusedAttention cuts the fixed context's keys into for a step of rows query
// rows per KV head (1: not cut): steps of a few hundred rows at most (prefill chunks already fill the GPU),
// pieces of at least ctxPieceRows keys, at most 8.
func ctxPieces(rows, capacity int) int {
	if rows > 512 || noSplitK {
		return 1
	}
	pieces := 1
	for pieces < 8 && capacity%(2*pieces) == 0 && capacity/(2*pieces) >= ctxPieceRows {
		pieces *= 2
	}
	return pieces
}

// fusedMinTokens: steps of at least this many tokens try the backend's fused attention; a decode step
// gains nothing from it (measured on the H200: a single query is no faster than the plain graph).
const fusedMinTokens = 64

// fusedAttention computes the step's attention with the backend's fused flash-attention op (cuDNN on the
// CUDA plugin), so the [heads, n, keys] scores never materialise: a prefill chunk of thousands of tokens
// then costs O(n) memory and runs near matmul peak. The keys come in up to three parts, each one fused
// call, merged by log-sum-exp with the softmax statistics the op returns:
//   - the fixed context, rows [0, ctxLen) (a padding mask; the group's query heads are folded into query
//     rows of their KV head, so the context is never broadcast to every query head);
//   - the dynamic segment's earlier rows [0, dynLen) (same);
//   - the step's own keys, causal.
//
// It returns nil when the backend has no fused attention for this case (the pure-Go backend, float32,
// the XLA CPU plugin), and the caller falls back to attentionSegments.
func fusedAttention(c *Config, q, chunkK, chunkV *Node, kv layerKV) (out *Node) {
	g := q.Graph()
	if c.SlidingWindow > 0 || c.HeadDim%8 != 0 || !q.DType().IsHalfPrecision() ||
		!g.Backend().Capabilities().Operations[compute.OpTypeFusedScaledDotProductAttention] {
		return nil
	}
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	scale := 1 / math.Sqrt(float64(hd))
	f32 := dtypes.Float32
	err := exceptions.TryCatch[error](func() {
		type part struct{ out, lse *Node } // [numKVHeads, n, group, headDim] f32, [numKVHeads, n, group]
		var parts []part
		// Folded query rows: row i*group+j of KV head h is query i of head h*group+j.
		qf := Reshape(TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3), 1, kvh, n*group, hd)
		qLen := InternalBackendOutputs(Const(g, []int32{int32(n * group)}))[0]
		padded := func(k, v, length *Node) {
			cfg := &compute.ScaledDotProductAttentionConfig{Scale: scale, QuerySeqLen: qLen,
				KeyValueSeqLen: InternalBackendOutputs(Reshape(length, 1))[0]}
			o, states := BackendFusedScaledDotProductAttention(qf, ExpandAxes(k, 0), ExpandAxes(v, 0),
				compute.AttentionAxesLayoutBHSD, cfg)
			o = Reshape(ConvertDType(o, f32), kvh, n, group, hd)
			lse := Reshape(states[0], kvh, n, group)
			// An empty part attends to nothing: weight 0 whatever the kernel returned for it.
			nonEmpty := GreaterThan(length, ZerosLike(length))
			o = Where(BroadcastToDims(nonEmpty, o.Shape().Dimensions...), o, ZerosLike(o))
			lse = Where(BroadcastToDims(nonEmpty, lse.Shape().Dimensions...), lse,
				Scalar(g, f32, maskedScore))
			parts = append(parts, part{o, lse})
		}
		// split is padded over the fixed context cut into pieces of its keys, each a batch entry of one
		// fused call (a contiguous reshape: [numKVHeads, capacity, headDim] = [numKVHeads·pieces, 1,
		// capacity/pieces, headDim]), merged like the other parts. For a step of few query rows the kernel
		// runs one thread block per KV head and query tile: on an H100, a 64-token question over an 8K
		// context of the LLaMA-2-7B shape ran 32 blocks and read the context at about 1.1 TB/s (122 µs a
		// layer).
		split := func(k, v, length *Node, pieces int) {
			capacity := k.Shape().Dimensions[1]
			piece := capacity / pieces
			b := kvh * pieces
			qs := Reshape(BroadcastToDims(Reshape(qf, kvh, 1, n*group, hd), kvh, pieces, n*group, hd), b, 1, n*group, hd)
			starts := MulScalar(Iota(g, shapes.Make(dtypes.Int32, kvh, pieces), 1), piece)
			lens := MinScalar(Max(Sub(BroadcastToDims(length, kvh, pieces), starts), ZerosLike(starts)), piece) // [kvh, pieces]
			cfg := &compute.ScaledDotProductAttentionConfig{Scale: scale,
				QuerySeqLen:    InternalBackendOutputs(Const(g, slices.Repeat([]int32{int32(n * group)}, b)))[0],
				KeyValueSeqLen: InternalBackendOutputs(Reshape(lens, b))[0]}
			o, states := BackendFusedScaledDotProductAttention(qs, Reshape(k, b, 1, piece, hd), Reshape(v, b, 1, piece, hd),
				compute.AttentionAxesLayoutBHSD, cfg)
			o = Reshape(ConvertDType(o, f32), kvh, pieces, n, group, hd)
			lse := Reshape(states[0], kvh, pieces, n, group)
			nonEmpty := BroadcastToDims(Reshape(GreaterThan(lens, ZerosLike(lens)), kvh, pieces, 1, 1), kvh, pieces, n, group)
			lse = Where(nonEmpty, lse, Scalar(g, f32, maskedScore))
			o = Where(BroadcastToDims(ExpandAxes(nonEmpty, -1), o.Shape().Dimensions...), o, ZerosLike(o))
			for i := range pieces {
				parts = append(parts, part{
					Reshape(Slice(o, AxisRange(), AxisRange(i, i+1)), kvh, n, group, hd),
					Reshape(Slice(lse, AxisRange(), AxisRange(i, i+1)), kvh, n, group)})
			}
		}
		if kv.ctxK != nil {
			if pieces := ctxPieces(n*group, kv.ctxK.Shape().Dimensions[1]); pieces > 1 {
				split(kv.ctxK, kv.ctxV, kv.ctxLen, pieces)
			} else {
				padded(kv.ctxK, kv.ctxV, kv.ctxLen)
			}
		}
		if kv.dynK != nil {
			padded(kv.dynK, kv.dynV, kv.dynLen)
		}
		qh := ExpandAxes(Transpose(q, 0, 1), 0) // [1, numHeads, n, headDim]
		o, states := BackendFusedScaledDotProductAttention(qh, ExpandAxes(chunkK, 0), ExpandAxes(chunkV, 0),
			compute.AttentionAxesLayoutBHSD, &compute.ScaledDotProductAttentionConfig{Scale: scale, Causal: true})
		o = TransposeAllAxes(Reshape(ConvertDType(o, f32), kvh, group, n, hd), 0, 2, 1, 3)
		lse := TransposeAllAxes(Reshape(states[0], kvh, group, n), 0, 2, 1)
		parts = append(parts, part{o, lse})

		// Log-sum-exp merge: out = Σ exp(lse_i - m)·out_i / Σ exp(lse_i - m).
		m := parts[0].lse
		for _, p := range parts[1:] {
			m = Max(m, p.lse)
		}
		var num, den *Node
		for _, p := range parts {
			w := Exp(Sub(p.lse, m))
			t := Mul(p.out, ExpandAxes(w, -1))
			if num == nil {
				num, den = t, w
			} else {
				num, den = Add(num, t), Add(den, w)
			}
		}
		merged := Div(num, ExpandAxes(den, -1)) // [numKVHeads, n, group, headDim]
		merged = TransposeAllAxes(ConvertDType(merged, q.DType()), 1, 0, 2, 3)
		out = Reshape(merged, n, c.NumAttentionHeads*hd)
	})
	if err != nil {
		if compute.IsNotImplemented(err) {
			return nil
		}
		panic(err)
	}
	return out
}

// writeRows returns cache [numKVHeads, capacity, headDim] with rows [off, off+count) of axis 1 replaced by
// rows[:, 0:count] (rows is [numKVHeads, n, headDim]; count = n when nil). It uses only Gather and Where,
// which every backend has; rows past the capacity are dropped (callers size the capacity).
func writeRows(cache, rows, off, count *Node) *Node {
	g := cache.Graph()
	kvh, capacity, hd := cache.Shape().Dimensions[0], cache.Shape().Dimensions[1], cache.Shape().Dimensions[2]
	n := rows.Shape().Dimensions[1]
	rel := Sub(Iota(g, shapes.Make(dtypes.Int32, capacity), 0), off) // [capacity] row index into rows
	inRange := And(GreaterOrEqual(rel, ZerosLike(rel)), LessThan(rel, Scalar(g, dtypes.Int32, n)))
	if count != nil {
		inRange = And(inRange, LessThan(rel, count))
	}
	idx := Clamp(Scalar(g, dtypes.Int32, 0), rel, Scalar(g, dtypes.Int32, n-1))
	heads := Iota(g, shapes.Make(dtypes.Int32, kvh, capacity, 1), 0)
	rowIdx := BroadcastToDims(Reshape(idx, 1, capacity, 1), kvh, capacity, 1)
	gathered := Gather(rows, Concatenate([]*Node{heads, rowIdx}, -1)) // [numKVHeads, capacity, headDim]
	mask := BroadcastToDims(Reshape(inRange, 1, capacity, 1), kvh, capacity, hd)
	return Where(mask, gathered, cache)
}

// envDir is the directory the environment variable name names ("" when unset). A value that is not a directory is
// named on stderr and "" is returned.
func envDir(name string) string {
	v := os.Getenv(name)
	if v == "" {
		return ""
	}
	if st, err := os.Stat(v); err != nil || !st.IsDir() {
		fmt.Fprintf(os.Stderr, "llama: ignoring %s=%q: not a directory\n", name, v)
		return ""
	}
	return v
}

// envInt is the positive integer the environment variable name holds; unset, it is def. A value that is not a
// positive integer is named on stderr and def is used.
func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return n
	}
	fmt.Fprintf(os.Stderr, "llama: ignoring %s=%q: not a positive integer (using the default, %d)\n", name, v, def)
	return def
}
