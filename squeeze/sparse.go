package squeeze

import (
	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// SparseAttentionFused is SparseAttention through the backend's fused flash attention (cuDNN on the
// CUDA plugin): the kept rows are gathered and attended by one fused call in which each KV head is a
// batch entry whose key length is its kept count, so the [H, M, B] scores never reach memory. The
// valid slots of idx [H, B] must be a prefix of kept [H] int32 slots (as SelectKeys returns). ok is
// false when the backend has no fused attention for these inputs (the pure-Go backend, float32 keys,
// a head dim that is not a multiple of 8); use SparseAttention then.
func SparseAttentionFused(q, keys, values, idx, kept *Node, scale float64) (p Partial, ok bool) {
	g := q.Graph()
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	b := idx.Shape().Dimensions[1]
	dtype := keys.DType()
	if !dtype.IsHalfPrecision() || values.DType() != dtype || d%8 != 0 ||
		!g.Backend().Capabilities().Operations[compute.OpTypeFusedScaledDotProductAttention] {
		return p, false
	}
	f32 := dtypes.Float32
	err := exceptions.TryCatch[error](func() {
		k := Reshape(GatherRows(keys, idx), h, 1, b, d)   // [H, 1, B, D]: batch H, one head
		v := Reshape(GatherRows(values, idx), h, 1, b, d) // [H, 1, B, D]
		qb := Reshape(ConvertDType(q, dtype), h, 1, m, d) // [H, 1, M, D]
		qLen := make([]int32, h)
		for i := range qLen {
			qLen[i] = int32(m)
		}
		kvLen := ConvertDType(kept, dtypes.Int32)
		cfg := &compute.ScaledDotProductAttentionConfig{Scale: scale,
			QuerySeqLen:    InternalBackendOutputs(Const(g, qLen))[0],
			KeyValueSeqLen: InternalBackendOutputs(kvLen)[0]}
		o, states := BackendFusedScaledDotProductAttention(qb, k, v, compute.AttentionAxesLayoutBHSD, cfg)
		out := Reshape(ConvertDType(o, f32), h, m, d)
		lse := Reshape(states[0], h, m, 1)
		// A head that kept nothing attends to nothing: weight 0, whatever the kernel returned.
		seen := Reshape(GreaterThan(kvLen, ZerosLike(kvLen)), h, 1, 1)
		out = Where(BroadcastToDims(seen, h, m, d), out, ZerosLike(out))
		lse = Where(BroadcastToDims(seen, h, m, 1), lse, Scalar(g, f32, negInf))
		p = Partial{Out: out, LSE: lse}
	})
	if err != nil {
		if compute.IsNotImplemented(err) {
			return Partial{}, false
		}
		panic(err)
	}
	return p, true
}

// SparseAttentionAuto is SparseAttentionFused where the backend has it, else SparseAttention.
func SparseAttentionAuto(q, keys, values, idx, valid, kept *Node, scale float64) Partial {
	if p, ok := SparseAttentionFused(q, keys, values, idx, kept, scale); ok {
		return p
	}
	return SparseAttention(q, keys, values, idx, valid, scale)
}

// CausalAttentionFused is the attention of a step's n tokens over their own keys, causal, through the
// backend's fused flash attention: q [H, n*G, D] holds a KV head's G query heads of each token (row
// i*G+j: token i, head j), keys and values [H, n, D] the tokens' keys and values in order. ok is false
// when the backend has no fused attention for these inputs (use DenseAttention with a causal mask).
// CausalAttentionFusedHeadMajor takes the rows head by head and needs no transposes.
func CausalAttentionFused(q, keys, values *Node, scale float64) (p Partial, ok bool) {
	h, rows := q.Shape().Dimensions[0], q.Shape().Dimensions[1]
	n := keys.Shape().Dimensions[1]
	if rows%n != 0 {
		return p, false
	}
	grp := rows / n
	// token-major [H, n, G, ·] ⇄ head-major [H, G, n, ·]
	swap := func(x *Node, a, b int) *Node {
		w := x.Shape().Dimensions[2]
		return Reshape(TransposeAllAxes(Reshape(x, h, a, b, w), 0, 2, 1, 3), h, rows, w)
	}
	if p, ok = CausalAttentionFusedHeadMajor(swap(q, n, grp), keys, values, scale); ok {
		p = Partial{Out: swap(p.Out, grp, n), LSE: swap(p.LSE, grp, n)}
	}
	return p, ok
}

// CausalAttentionFusedHeadMajor is CausalAttentionFused with q's rows head-major: q [H, G*n, D], row
// j*n+i the query head j of token i, as the output. A KV head's G query heads are then G flash heads
// of n consecutive rows each, so the call needs no transpose of the queries, the output or the
// log-sum-exp (squeezedAttention lays a user input's rows out so for grouped-query models).
func CausalAttentionFusedHeadMajor(q, keys, values *Node, scale float64) (p Partial, ok bool) {
	g := q.Graph()
	h, rows, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	n := keys.Shape().Dimensions[1]
	dtype := keys.DType()
	if rows%n != 0 || !dtype.IsHalfPrecision() || values.DType() != dtype || d%8 != 0 ||
		!g.Backend().Capabilities().Operations[compute.OpTypeFusedScaledDotProductAttention] {
		return p, false
	}
	grp := rows / n
	f32 := dtypes.Float32
	err := exceptions.TryCatch[error](func() {
		// One flash head per query head: [1, H*G, n, D]; the kernel shares each KV head with its group.
		qh := Reshape(ConvertDType(q, dtype), 1, h*grp, n, d)
		o, states := BackendFusedScaledDotProductAttention(qh, ExpandAxes(keys, 0), ExpandAxes(values, 0),
			compute.AttentionAxesLayoutBHSD, &compute.ScaledDotProductAttentionConfig{Scale: scale, Causal: true})
		p = Partial{Out: Reshape(ConvertDType(o, f32), h, rows, d), LSE: Reshape(states[0], h, rows, 1)}
	})
	if err != nil {
		if compute.IsNotImplemented(err) {
			return Partial{}, false
		}
		panic(err)
	}
	return p, true
}
