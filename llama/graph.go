package llama

import (
	"math"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
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
// Positions: ctx rows hold positions 0..ctxLen-1, dyn rows ctxLen..ctxLen+dynLen-1, so the step's first
// token is at position ctxLen+dynLen. Attention is exact softmax over both segments (masked), so the
// result equals ordinary causal attention over the whole sequence.

// maskedScore is the score of a masked key: exp underflows to exactly 0 in float32.
const maskedScore = -1e30

// layerNodes are one decoder layer's weights inside a graph.
type layerNodes struct {
	inNorm, q, k, v, o, postNorm, gate, up, down *Node
	qBias, kBias, vBias, oBias                   *Node // nil when absent
	gateBias, upBias, downBias                   *Node
}

// modelNodes are the model's weights inside a graph.
type modelNodes struct {
	embed, norm, lmHead *Node
	layers              []layerNodes
}

// unpackWeights splits the flat weight inputs (in Config.WeightNames order) into named nodes.
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
		l.inNorm, l.q, l.k, l.v, l.o = next(), next(), next(), next(), next()
		l.postNorm, l.gate, l.up, l.down = next(), next(), next(), next()
		if c.AttentionBias {
			l.qBias, l.kBias, l.vBias = next(), next(), next()
		}
		if c.AttentionOutBias {
			l.oBias = next()
		}
		if c.MLPBias {
			l.gateBias, l.upBias, l.downBias = next(), next(), next()
		}
		m.layers = append(m.layers, l)
	}
	return m
}

// stepInputs are the non-weight inputs of a step.
type stepInputs struct {
	invFreq            *Node          // [headDim/2] float32
	tokens             *Node          // [n] int32
	ctxLen, dynLen     *Node          // scalar int32
	nValid             *Node          // scalar int32: tokens[nValid:] are padding
	ctxK, ctxV         []*Node        // per layer [numKVHeads, ctxCap, headDim]
	dynK, dynV         []*Node        // per layer [numKVHeads, dynCap, headDim]
	allLogits          bool           // static: logits for every position, else only for row nValid-1
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
	for l, lw := range w.layers {
		var sq *squeezeLayer
		if s.squeeze != nil {
			sq = &s.squeeze.layers[l]
		}
		x, dynK[l], dynV[l] = decoderLayer(c, lw, x, cos, sin, s.ctxK[l], s.ctxV[l], s.dynK[l], s.dynV[l],
			s.dynLen, ctxMask, dynMask, sq)
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

// decoderLayer is one transformer block, in the order of the paper:
// norm → q/k/v → RoPE → attention → o → residual → norm → SwiGLU → residual.
func decoderLayer(c *Config, w layerNodes, x, cos, sin, ctxK, ctxV, dynK, dynV, dynLen, ctxMask, dynMask *Node,
	sq *squeezeLayer) (
	out, newDynK, newDynV *Node) {
	n := x.Shape().Dimensions[0]
	hd := c.HeadDim

	// Attention block.
	h := rmsNorm(x, w.inNorm, c.RMSNormEps)                                               // [n, hidden]
	q := Reshape(linear(h, w.q, w.qBias), n, c.NumAttentionHeads, hd)                     // [n, numHeads, headDim]
	k := Reshape(linear(h, w.k, w.kBias), n, c.NumKeyValueHeads, hd)                      // [n, numKVHeads, headDim]
	v := Reshape(linear(h, w.v, w.vBias), n, c.NumKeyValueHeads, hd)                      // [n, numKVHeads, headDim]
	q, k = applyRoPE(q, cos, sin), applyRoPE(k, cos, sin)                                 // keys are cached post-RoPE
	kT, vT := Transpose(k, 0, 1), Transpose(v, 0, 1)                                      // [numKVHeads, n, headDim]
	newDynK, newDynV = writeRows(dynK, kT, dynLen, nil), writeRows(dynV, vT, dynLen, nil) // [numKVHeads, dynCap, headDim]
	var attn *Node                                                                        // [n, numHeads*headDim]
	if sq == nil {
		attn = attention(c, q, ctxK, ctxV, newDynK, newDynV, ctxMask, dynMask)
	} else {
		attn = squeezedAttention(c, q, ctxK, ctxV, newDynK, newDynV, dynMask, sq)
	}
	x = Add(x, linear(attn, w.o, w.oBias)) // residual

	// MLP block (SwiGLU).
	h = rmsNorm(x, w.postNorm, c.RMSNormEps)
	gate := linear(h, w.gate, w.gateBias) // [n, intermediate]
	up := linear(h, w.up, w.upBias)       // [n, intermediate]
	x = Add(x, linear(Mul(silu(gate), up), w.down, w.downBias))
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

// linear is x·Wᵀ (+ b) with W in Hugging Face's [out, in] layout.
func linear(x, w, b *Node) *Node {
	y := einsum("ni,oi->no", x, w) // [n, out]
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
	ctxCap := s.ctxK[0].Shape().Dimensions[1]
	dynCap := s.dynK[0].Shape().Dimensions[1]
	qPos := Reshape(positions, n, 1) // [n, 1]

	ctxPos := Reshape(Iota(g, shapes.Make(dtypes.Int32, ctxCap), 0), 1, ctxCap) // [1, ctxCap]
	ctxMask = BroadcastToDims(LessThan(ctxPos, s.ctxLen), n, ctxCap)            // [n, ctxCap]

	dynRow := Reshape(Iota(g, shapes.Make(dtypes.Int32, dynCap), 0), 1, dynCap) // [1, dynCap]
	dynPos := Add(dynRow, Add(s.ctxLen, ZerosLike(dynRow)))                     // absolute positions
	dynMask = LessOrEqual(dynPos, qPos)                                         // [n, dynCap] causal
	if c.SlidingWindow > 0 {
		w := Scalar(g, dtypes.Int32, c.SlidingWindow)
		ctxMask = And(ctxMask, LessThan(Sub(qPos, ctxPos), w))
		dynMask = And(dynMask, LessThan(Sub(qPos, dynPos), w))
	}
	return ctxMask, dynMask
}

// attention is grouped-query attention of q [n, numHeads, headDim] over the ctx and dyn segments
// ([numKVHeads, capacity, headDim] each), one softmax over both. Returns [n, numHeads*headDim].
func attention(c *Config, q, ctxK, ctxV, dynK, dynV, ctxMask, dynMask *Node) *Node {
	n, hd := q.Shape().Dimensions[0], c.HeadDim
	kvh, group := c.NumKeyValueHeads, c.GroupSize()
	ctxCap := ctxK.Shape().Dimensions[1]
	dynCap := dynK.Shape().Dimensions[1]
	dtype := q.DType()
	scale := 1 / math.Sqrt(float64(hd))

	// The query heads sharing a KV head become rows of one product: [numKVHeads, n*group, headDim].
	qg := TransposeAllAxes(Reshape(q, n, kvh, group, hd), 1, 0, 2, 3)
	qg = Reshape(qg, kvh, n*group, hd)
	sCtx := MulScalar(einsum("kqd,kpd->kqp", qg, ctxK), scale) // [numKVHeads, n*group, ctxCap]
	sDyn := MulScalar(einsum("kqd,kpd->kqp", qg, dynK), scale) // [numKVHeads, n*group, dynCap]
	scores := ConvertDType(Concatenate([]*Node{sCtx, sDyn}, -1), dtypes.Float32)
	mask := Concatenate([]*Node{ctxMask, dynMask}, -1) // [n, ctxCap+dynCap]
	mask = BroadcastToDims(Reshape(mask, 1, n, 1, ctxCap+dynCap), kvh, n, group, ctxCap+dynCap)
	mask = Reshape(mask, kvh, n*group, ctxCap+dynCap)
	scores = Where(mask, scores, Scalar(scores.Graph(), dtypes.Float32, maskedScore))
	probs := ConvertDType(Softmax(scores, -1), dtype) // [numKVHeads, n*group, ctxCap+dynCap]
	pCtx := Slice(probs, AxisRange(), AxisRange(), AxisRange(0, ctxCap))
	pDyn := Slice(probs, AxisRange(), AxisRange(), AxisRange(ctxCap, ctxCap+dynCap))
	out := Add(einsum("kqp,kpd->kqd", pCtx, ctxV), einsum("kqp,kpd->kqd", pDyn, dynV)) // [numKVHeads, n*group, headDim]
	out = TransposeAllAxes(Reshape(out, kvh, n, group, hd), 1, 0, 2, 3)                // [n, numKVHeads, group, headDim]
	return Reshape(out, n, c.NumAttentionHeads*hd)
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
