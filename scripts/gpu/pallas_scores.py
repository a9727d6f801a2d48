"""Rounds 10-12 (session 11): a user input's cluster scores in two Pallas (Triton) kernels instead of XLA's
materialised [H, M, K] float32 probabilities. ROUND=11 (checks, timings of both kernels together over a few block
shapes, IR diff, EXPORT=1 every timed config) or ROUND=12 (the default: each kernel timed alone over 15 block, warp
and stage choices at the 128K shapes, the best pair checked, timed and, with EXPORT=1, exported as the engine embeds
it: squeeze/kernels/README.md).

squeeze.ClusterScores for queries q [H, M, D] (M = a user input's tokens × the KV head's query heads), centroids
C [H, K, D] and counts N [H, K]:
    logZ_m  = log Σ_{j: N_j > 0} N_j · exp(scale · q_m·C_j)
    score_c = (1/M) Σ_m exp(scale · q_m·C_c − logZ_m)     (0 for an empty cluster)
XLA writes the [H, M, K] logits in float32 and reads them back three times (maximum, sum, the mean of the
exponentials): at the LLaMA-2-7B shape with a 128K context (K = 6,554) and a 512-token input that is 430 MB a layer
for each pass. The two kernels never write them:
- scores_z, one program per (head, BM query rows, centroid split): loops over its share of the head's centroids in
  BK blocks, a tensor-core product [BM, D]·[D, BK] a block, and keeps the rows' running maximum and sum (online
  log-sum-exp): mx, sm [H·nMB·KS·BM].
- scores_p, one program per (head, BK centroids, query split): loops over its share of the query rows in BM blocks;
  a block's logZ from its KS partials, its logits recomputed, exp(logit − logZ) added element-wise into a [BM, BK]
  accumulator summed over the rows at the end: partial sums [H·nKB·MS·BK]; XLA adds the MS splits and divides by M.
  KS and MS are chosen for about `target` programs per kernel (splits()).
Round 10 (KS = 1, the rows summed every block) was correct but 1.4-1.8× faster than XLA only (BENCHMARKS.md).
Both kernels' Triton IR depends only on (D, BM, BK, warps, stages): sizes come at run time from prm [8] int32
(M, K, nMB, nKB of P, MS, Mp, nKB of Z, KS) and the scale from scale [1] f32; q and C are read as [N, D] rows through clamped
index vectors (no masks), so one config serves every input length and context (ir_diff checks it).

Checks against the jnp formulation (the engine's XLA graph) and times both, chained over layers, at the 7B / 8B
shapes, 32K and 128K; EXPORT=1 writes the configs (scores_{z,p}_d{D}.cfg) to $OUT/kernels.
Round 15 (session 12): the same kernels in base 2 (embedded). Round 16 (session 13): a wider grid (32-row blocks, 2
warps, 4 stages) and half-precision exponentials (ex2.approx.f16x2), neither faster than round 15's pair.
Run on the GPU machine: python3 scripts/gpu/pallas_scores.py (appends to $OUT/pallas.md).
"""
import functools
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

F32, I32, BF16 = jnp.float32, jnp.int32, jnp.bfloat16
NEG = -1e30
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
say = ps.say


def ex2_f16(x):
    """2^x of a float32 tile through ex2.approx.f16x2 (two elements an instruction), back in float32 (round 16)."""
    from jax.experimental.pallas import triton as plgpu
    h = x.astype(jnp.float16)
    [r] = plgpu.elementwise_inline_asm("ex2.approx.f16x2 $0, $1;", args=[h], constraints="=r,r", pack=2,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(h.shape, jnp.float16)])
    return r.astype(F32)


def _logits(q, c, scale):
    """[BM, D]·[BK, D]ᵀ on the tensor cores, float32 accumulation, scaled."""
    return lax.dot_general(q, c, (((1,), (1,)), ((), ())), preferred_element_type=F32) * scale


@functools.lru_cache(maxsize=None)
def make_scores_z(d, bm, bk, num_warps=4, num_stages=2, n_static=1 << 16, p_static=64, debug=False, base2=False, f16=False):
    """q [Nq, D], c [Nc, D] bf16, counts [Nc] f32, prm [8] i32, scale [1] f32 → the rows' running maximum and sum
    mx, sm [P·BM] f32. Program p = (h·nMB + mb)·KS + ks covers the rows mb·BM .. of head h over its KS-th share of
    the head's centroid blocks (round 11: the centroids split over KS programs; round 10 had KS = 1).
    base2 (round 15, the same contract: mx in natural log units, sm the same sums): the logits scaled by scale·log2 e
    in the product's one multiply, the counts' bias log2 N, ex2 instead of exp (exp(x) is ex2(x·log2 e): one
    multiply fewer an element), the maximum converted back to natural units at the end."""
    ex, lg_n = (jnp.exp2, jnp.log2) if base2 else (jnp.exp, jnp.log)
    if f16:  # round 16: the per-element exponentials in half precision, two a MUFU instruction
        ex = ex2_f16

    def kernel(q_ref, c_ref, n_ref, prm_ref, scale_ref, mx_ref, sm_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb, ks_n = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[6], prm_ref[7]  # nkb: Z's own BK blocks
        scale = scale_ref[0]
        if base2:
            scale = scale * LOG2E
        ks = pid % ks_n
        hm = pid // ks_n
        h = hm // nmb
        mb = hm % nmb
        rows = h * m_rows + jnp.minimum(mb * bm + jnp.arange(bm, dtype=I32), m_rows - 1)
        q = q_ref[rows, :]
        per = (nkb + ks_n - 1) // ks_n

        def body(i, carry):
            mx, sm = carry
            kk = (ks * per + i) * bk + jnp.arange(bk, dtype=I32)
            crow = h * k_cl + jnp.minimum(kk, k_cl - 1)
            c = c_ref[crow, :]
            cnt = n_ref[crow]
            bias = jnp.where((kk < k_cl) & (cnt > 0), lg_n(jnp.maximum(cnt, 1.0)), NEG)
            lg = _logits(q, c, scale) + bias[None, :]
            m_new = jnp.maximum(mx, jnp.max(lg, axis=1))
            sm = sm * jnp.exp2(mx - m_new) + jnp.sum(ex(lg - m_new[:, None]), axis=1) if base2 else \
                sm * ex(mx - m_new) + jnp.sum(ex(lg - m_new[:, None]), axis=1)
            return m_new, sm

        mx, sm = lax.fori_loop(0, per, body, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))
        if base2:
            mx = jnp.where(mx > 0.5 * NEG, mx * LN2, NEG)
        mx_ref[pl.ds(pid * bm, bm)] = mx
        sm_ref[pl.ds(pid * bm, bm)] = sm

    return pl.pallas_call(
        kernel, out_shape=(jax.ShapeDtypeStruct((p_static * bm,), F32), jax.ShapeDtypeStruct((p_static * bm,), F32)),
        grid=(p_static,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


@functools.lru_cache(maxsize=None)
def make_scores_z_ref(d, bm, bk, num_warps=4, num_stages=3, n_static=1 << 16, p_static=64, debug=False):
    """Round 17 (session 13): kernel Z in base 2 with a fixed reference instead of the running maximum, the same
    contract as make_scores_z(base2=True) (mx in natural log units, sm = Σ exp(logit − mx) over the program's share).
    Nsight Compute (call 11) found round 15's Z bound by instruction issue: two programs an SM, a warp issuing every
    3.65 cycles. Every block it reduced each row twice across threads (its maximum, then its sum) and rescaled the
    sum. Here the reference is the row's maximum over the share's first block (one reduction), every later block adds
    ex2(logit − reference) element-wise into a [BM, BK] accumulator, and the rows are summed once at the end (as
    kernel P does): an FFMA, an ex2 and an add an element. The reference is at most the share's true maximum, so the
    sum is at least 1; it overflows only if a later logit exceeds the first block's best by about 2^120 in ratio.
    Such a program (sum not below 2^120, or not finite), and one whose first block has no valid centroid, runs the
    running-maximum loop instead (lax.cond), so the results keep round 15's semantics."""

    def kernel(q_ref, c_ref, n_ref, prm_ref, scale_ref, mx_ref, sm_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb, ks_n = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[6], prm_ref[7]
        scale = scale_ref[0] * LOG2E
        ks = pid % ks_n
        hm = pid // ks_n
        h = hm // nmb
        mb = hm % nmb
        rows = h * m_rows + jnp.minimum(mb * bm + jnp.arange(bm, dtype=I32), m_rows - 1)
        q = q_ref[rows, :]
        per = (nkb + ks_n - 1) // ks_n

        def block(i):
            kk = (ks * per + i) * bk + jnp.arange(bk, dtype=I32)
            crow = h * k_cl + jnp.minimum(kk, k_cl - 1)
            c = c_ref[crow, :]
            cnt = n_ref[crow]
            bias = jnp.where((kk < k_cl) & (cnt > 0), jnp.log2(jnp.maximum(cnt, 1.0)), NEG)
            return _logits(q, c, scale) + bias[None, :]

        lg0 = block(0)
        m0 = jnp.max(lg0, axis=1)

        def body(i, acc):
            return acc + jnp.exp2(block(i) - m0[:, None])

        acc = lax.fori_loop(1, per, body, jnp.exp2(lg0 - m0[:, None]))
        sm = jnp.sum(acc, axis=1)
        # (no jnp.any: Pallas Triton has no reduce_or)
        bad = jnp.max(jnp.where((m0 < 0.5 * NEG) | jnp.logical_not(sm < 2.0**120), 1.0, 0.0)) > 0.5

        def online():
            def body_o(i, carry):
                mx, s_ = carry
                lg = block(i)
                m_new = jnp.maximum(mx, jnp.max(lg, axis=1))
                return m_new, s_ * jnp.exp2(mx - m_new) + jnp.sum(jnp.exp2(lg - m_new[:, None]), axis=1)
            return lax.fori_loop(0, per, body_o, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))

        mx, sm = lax.cond(bad, online, lambda: (m0, sm))
        mx = jnp.where(mx > 0.5 * NEG, mx * LN2, NEG)
        mx_ref[pl.ds(pid * bm, bm)] = mx
        sm_ref[pl.ds(pid * bm, bm)] = sm

    return pl.pallas_call(
        kernel, out_shape=(jax.ShapeDtypeStruct((p_static * bm,), F32), jax.ShapeDtypeStruct((p_static * bm,), F32)),
        grid=(p_static,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


@functools.lru_cache(maxsize=None)
def make_scores_p(d, bm, bk, num_warps=4, num_stages=2, n_static=1 << 16, p_static=64, debug=False, base2=False, f16=False):
    """q [Nq, D], c [Nc, D] bf16, mx, sm [H·nMB·KS·BM] f32 (make_scores_z), prm [8] i32, scale [1] f32 → partial
    sums [P·BK] f32: program p = (h·nKB + kb)·MS + ms writes Σ over its rows of exp(logit − logZ) for the centroids
    kb·BK .. (read as [H, nKB, MS, BK]). Each M block's logZ comes from its KS partials; the block's probabilities are
    added element-wise into a [BM, BK] accumulator, summed over the rows once at the end (round 11; round 10 summed
    every block, a cross-warp reduction each time).
    base2 (round 15, the same contract): a block's log Z becomes log2 Z, +inf for the padding rows (their terms are
    ex2(-inf) = 0: no select an element), and each element costs a fused multiply-subtract, one ex2 and an addition."""

    def kernel(q_ref, c_ref, mx_ref, sm_ref, prm_ref, scale_ref, o_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb, ms_n, ks_n = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3], prm_ref[4], prm_ref[7]
        scale = scale_ref[0]
        if base2:
            scale = scale * LOG2E
        h = pid // (nkb * ms_n)
        r = pid % (nkb * ms_n)
        kb = r // ms_n
        ms = r % ms_n
        kk = kb * bk + jnp.arange(bk, dtype=I32)
        c = c_ref[h * k_cl + jnp.minimum(kk, k_cl - 1), :]
        per = (nmb + ms_n - 1) // ms_n

        def body(i, acc):
            mb = jnp.minimum(ms * per + i, nmb - 1)
            m_idx = (ms * per + i) * bm + jnp.arange(bm, dtype=I32)
            ok = m_idx < m_rows
            q = q_ref[h * m_rows + jnp.minimum(m_idx, m_rows - 1), :]
            base = (h * nmb + mb) * ks_n * bm + jnp.arange(bm, dtype=I32)

            def comb(j, zc):
                z, l = zc
                mj = mx_ref[base + j * bm]
                sj = sm_ref[base + j * bm]
                zn = jnp.maximum(z, mj)
                return zn, l * jnp.exp(z - zn) + sj * jnp.exp(mj - zn)

            z, l = lax.fori_loop(0, ks_n, comb, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))
            lz = z + jnp.log(jnp.maximum(l, 1e-30))
            if base2:
                lz2 = jnp.where(ok, lz * LOG2E, jnp.inf)
                return acc + (ex2_f16 if f16 else jnp.exp2)(_logits(q, c, scale) - lz2[:, None])
            lg = _logits(q, c, scale)
            return acc + jnp.where(ok[:, None], jnp.exp(lg - lz[:, None]), 0.0)

        acc = lax.fori_loop(0, per, body, jnp.zeros((bm, bk), F32))
        o_ref[pl.ds(pid * bk, bk)] = jnp.sum(acc, axis=0)

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((p_static * bk,), F32),
        grid=(p_static,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def splits(h, nmb, nkb, target):
    """KS (centroid splits of scores_z) and MS (query splits of scores_p) giving about `target` programs each."""
    ks = max(1, min(nkb, -(-target // (h * nmb))))
    ms = max(1, min(nmb, -(-target // (h * nkb))))
    return ks, ms


def scores_call(q, cent, counts, scale, bm=64, bk=128, nw=4, st=2, target=528, zcfg=None, pcfg=None, parts=None,
                fast=False, f16z=False, f16p=False, zref=False):
    """ClusterScores through the two kernels: q [H, M, D], cent [H, K, D] bf16, counts [H, K] f32 → [H, K] f32.
    zcfg / pcfg = (BK, warps, stages) of kernel Z / P (default: bk, nw, st for both; round 12 tunes them apart).
    parts = "z": kernel Z's outputs only; "p": kernel P (+ the sum) over Z outputs made once outside (for timing)."""
    h, m, d = q.shape
    k = cent.shape[1]
    bkz, nwz, stz = zcfg or (bk, nw, st)
    bkp, nwp, stp = pcfg or (bk, nw, st)
    nmb, nkbz, nkbp = -(-m // bm), -(-k // bkz), -(-k // bkp)
    ks, _ = splits(h, nmb, nkbz, target)
    _, ms = splits(h, nmb, nkbp, target)
    mp, kp = nmb * bm, nkbp * bkp
    prm = jnp.array([m, k, nmb, nkbp, ms, mp, nkbz, ks], I32)
    sc = jnp.array([scale], F32)
    qf, cf = q.reshape(h * m, d), cent.reshape(h * k, d)
    if isinstance(parts, tuple):  # Z's outputs given
        mx, sm = parts
    else:
        zk = make_scores_z_ref(d, bm, bkz, nwz, stz, h * m, h * nmb * ks) if zref else \
            make_scores_z(d, bm, bkz, nwz, stz, h * m, h * nmb * ks, base2=fast, f16=f16z)
        mx, sm = zk(qf, cf, counts.reshape(-1), prm, sc)
        if parts == "z":
            return mx, sm
    part = make_scores_p(d, bm, bkp, nwp, stp, h * m, h * nkbp * ms, base2=fast, f16=f16p)(qf, cf, mx, sm, prm, sc)
    s = jnp.sum(part.reshape(h, nkbp, ms, bkp), axis=2).reshape(h, kp)[:, :k] / m
    return jnp.where(counts > 0, s, 0.0)


def xla_scores(q, cent, counts, scale):
    """The engine's graph (squeeze.ClusterScores with bf16 centroids): logits in float32 from a bf16 product."""
    lg = jnp.einsum("hmd,hkd->hmk", q, cent, preferred_element_type=F32) * scale
    ne = (counts > 0)[:, None, :]
    w = jnp.where(ne, lg + jnp.log(jnp.maximum(counts, 1.0))[:, None, :], NEG)
    mx = jnp.max(w, axis=-1, keepdims=True)
    lz = mx + jnp.log(jnp.sum(jnp.exp(w - mx), axis=-1, keepdims=True))
    lp = jnp.where(ne, lg - lz, NEG)
    return jnp.mean(jnp.exp(lp), axis=1)


def scores_error(got, want, counts, empty_zero=True):
    """The kernels' scores got against XLA's want: the largest difference relative to want's largest, and whether
    they pass (within 1e-4, finite, and with empty_zero 0 for every empty cluster)."""
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(want))
    ok = err < 1e-4 and bool(jnp.all(jnp.isfinite(got)))
    if empty_zero:
        ok = ok and bool(jnp.all(jnp.where(counts == 0, got == 0, True)))
    return err, ok


def case_data(key, h, m, k, d, empty_frac=0.05):
    k1, k2, k3 = jax.random.split(key, 3)
    q = (jax.random.normal(k1, (h, m, d), F32) * 2.0).astype(BF16)
    cent = jax.random.normal(k2, (h, k, d), F32).astype(BF16)
    counts = jnp.floor(jax.random.uniform(k3, (h, k), F32) * 40.0)
    counts = jnp.where(jax.random.uniform(jax.random.fold_in(k3, 1), (h, k)) < empty_frac, 0.0, counts)
    return q, cent, counts


def chain_scores(fn):
    """A jitted chain of layers' cluster scores: fn(q, centroids, counts) → scores (or a tuple, its first item used);
    each layer's queries depend on the previous layers' results, so none is skipped or merged."""
    def f(q, cs, ns):
        acc = jnp.float32(0)
        for c_, n_ in zip(cs, ns):
            out = fn(q, c_, n_)
            acc = acc + jnp.ravel(out[0] if isinstance(out, tuple) else out)[0]
            q = (q.astype(F32) + acc * 1e-30).astype(BF16)
        return acc
    return jax.jit(f)


def timing_case(h, m, k, layers, seed, d=128):
    """Random inputs of `layers` layers (case_data) and a timer: per(fn) is chain_scores(fn)'s time a layer in µs,
    an empty call's time subtracted. Also returns the first layer's inputs."""
    datas = [case_data(jax.random.PRNGKey(seed + i), h, m, k, d) for i in range(layers)]
    args = (datas[0][0], [x[1] for x in datas], [x[2] for x in datas])
    t_empty = ps.timeit(jax.jit(lambda q: q[0, 0, 0].astype(F32) + 1), (args[0],))
    return (lambda fn: (ps.timeit(chain_scores(fn), args) - t_empty) / layers * 1e6), (args[0], args[1][0], args[2][0])


def lower_cfgs(d, bm, bk, nw, st, nq=1 << 16, nc=1 << 15, p=64, debug=False):
    a = (jax.ShapeDtypeStruct((nq, d), BF16), jax.ShapeDtypeStruct((nc, d), BF16))
    prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
    z = make_scores_z(d, bm, bk, nw, st, nq, p, debug)
    zc = p2.extract_config(jax.jit(z).lower(*a, jax.ShapeDtypeStruct((nc,), F32), prm, sc).as_text())
    pk = make_scores_p(d, bm, bk, nw, st, nq, p, debug)
    part = jax.ShapeDtypeStruct((p * bm,), F32)
    pc = p2.extract_config(jax.jit(pk).lower(*a, part, part, prm, sc).as_text())
    return zc, pc


def ir_diff():
    """Which shapes the kernels' IR depends on: the Triton modules (printed by debug=True) for two shape sets."""
    import contextlib
    import difflib
    import io
    import re
    texts = []
    for nq, nc, p in ((1 << 16, 1 << 15, 64), (999, 333, 7)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            lower_cfgs(128, 64, 128, 4, 2, nq, nc, p, True)
        texts.append(buf.getvalue())
    strip = lambda t: [re.sub(r"loc\(.*?\)|#loc\d*", "", ln) for ln in t.splitlines() if not ln.startswith("#loc")]
    d = list(difflib.unified_diff(strip(texts[0]), strip(texts[1]), lineterm="", n=0))
    say(f"IR diff between shape sets ({len(texts[0])} / {len(texts[1])} chars printed), first 40 lines:\n```\n" +
        "\n".join(d[:40]) + "\n```")
    a = lower_cfgs(128, 64, 128, 4, 2, 1 << 16, 1 << 15, 64)
    b = lower_cfgs(128, 64, 128, 4, 2, 1 << 17, 1 << 14, 256)
    say(f"configs' IR equal for two large shape sets: z {p2.ir_of(a[0]) == p2.ir_of(b[0])}, p {p2.ir_of(a[1]) == p2.ir_of(b[1])}")


# (BM, BK, warps, stages) timed and exported
TARGETS = (528, 1056)
DECODE_COMBOS = ((16, 128, 4, 2), (16, 256, 4, 2))  # a decode step's few query rows, padded to tl.dot's 16  # programs aimed at per kernel (2, 4, 8 per SM of an H100/H200)
COMBOS = ((64, 128, 4, 2), (64, 128, 8, 2), (128, 128, 8, 2), (64, 256, 8, 2))


CHECK_CASES = ((3, 37, 50, 128, 528), (2, 512, 1638, 128, 10), (4, 100, 333, 64, 528), (8, 2048, 1638, 128, 528),
               (2, 300, 5000, 128, 4000))  # (H, M, K, D, programs aimed at): ragged sizes, few and many splits
INPUT_SHAPES = (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8))  # (label, H, M, K, layers)


def grid_report(tz, tp, shapes_):
    """The table of kernels Z and P timed alone (tz, tp: (BM, BK, warps, stages) → µs a layer per shape)."""
    say("\n| kernel | BM | BK | warps | stages | " + " | ".join(x[0] for x in shapes_) + " | sum |\n|---|---:|---:|---:|---:|" + "---:|" * (len(shapes_) + 1))
    for name, tab in (("Z", tz), ("P", tp)):
        for key, ts in sorted(tab.items(), key=lambda kv: sum(kv[1])):
            if len(ts) == len(shapes_):
                say(f"| {name} | {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(f"{t:.1f}" for t in ts) + f" | {sum(ts):.1f} |")


def best_pair(tz, tp, n_shapes, bms):
    """The fastest Z and P (timed at every shape) sharing a BM (P reads Z's partials by BM rows): (BM, Z's (BK,
    warps, stages), P's)."""
    best = None
    for bm in bms:
        zk = [kv for kv in tz.items() if kv[0][0] == bm and len(kv[1]) == n_shapes]
        pk = [kv for kv in tp.items() if kv[0][0] == bm and len(kv[1]) == n_shapes]
        if not zk or not pk:
            continue
        bz = min(zk, key=lambda kv: sum(kv[1]))
        bp = min(pk, key=lambda kv: sum(kv[1]))
        tot = sum(bz[1]) + sum(bp[1])
        if best is None or tot < best[0]:
            best = (tot, bm, bz[0][1:], bp[0][1:])
    say(f"best pair: BM {best[1]}, Z (BK, warps, stages) {best[2]}, P {best[3]}")
    return best[1:]


def check_pair(bm, zc, pc, fast=False, empty_zero=False):
    """The pair against XLA's formulation on CHECK_CASES (relative 1e-4; finite; with empty_zero, 0 for an empty
    cluster); says each case and returns whether all passed."""
    ok_all = True
    for case, (h, m, k, d, tg) in enumerate(CHECK_CASES):
        q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
        scale = 1.0 / d**0.5
        want = xla_scores(q, cent, counts, scale)
        got = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, bm, target=tg, zcfg=zc, pcfg=pc, fast=fast))(q, cent, counts)
        err, ok = scores_error(got, want, counts, empty_zero)
        ok_all &= ok
        say(f"best pair check {case} (H={h} M={m} K={k} D={d}): {'OK' if ok else 'FAIL'} ({err:.1e})")
    return ok_all


def export_pair(bm, zc, pc, base2=False):
    """Writes the pair as the engine embeds it ($OUT/kernels/scores_{z,p}_d{64,128}.cfg and scores.json)."""
    import json
    outdir = os.path.join(ps.OUT, "kernels")
    os.makedirs(outdir, exist_ok=True)
    for d in (64, 128):
        a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
        prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
        part = jax.ShapeDtypeStruct((64 * bm,), F32)
        z = make_scores_z(d, bm, zc[0], zc[1], zc[2], 1 << 16, 64, base2=base2)
        pk = make_scores_p(d, bm, pc[0], pc[1], pc[2], 1 << 16, 64, base2=base2)
        with open(os.path.join(outdir, f"scores_z_d{d}.cfg"), "w") as fh:
            fh.write(p2.extract_config(jax.jit(z).lower(*a, jax.ShapeDtypeStruct((1 << 15,), F32), prm, sc).as_text()))
        with open(os.path.join(outdir, f"scores_p_d{d}.cfg"), "w") as fh:
            fh.write(p2.extract_config(jax.jit(pk).lower(*a, part, part, prm, sc).as_text()))
    with open(os.path.join(outdir, "scores.json"), "w") as fh:
        json.dump({"bm": bm, "z": zc, "p": pc}, fh)
    say(f"exported the best pair to {outdir}")


def round11():
    say(f"\n## round 11 (input cluster scores in two kernels, split and accumulated): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    try:
        ir_diff()
    except Exception:  # noqa: BLE001
        say(f"IR check FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    # correctness: ragged M and K, empty clusters, huge logits, several splits
    for case, (h, m, k, d, tg) in enumerate(((3, 37, 50, 128, 528), (2, 512, 1638, 128, 10), (4, 100, 333, 64, 528),
                                             (8, 2048, 1638, 128, 528), (1, 64, 64, 128, 1), (2, 300, 5000, 128, 4000))):
        try:
            q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
            scale = 1.0 / d**0.5
            want = xla_scores(q, cent, counts, scale)
            got = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, target=tg))(q, cent, counts)
            err, ok = scores_error(got, want, counts)
            sm = float(jnp.max(jnp.abs(jnp.sum(got * counts, axis=1) - 1.0)))
            ok_all &= ok
            say(f"scores check {case} (H={h} M={m} K={k} D={d} splits {splits(h, -(-m // 64), -(-k // 128), tg)}): {'OK' if ok else 'FAIL'} (max err / max {err:.1e}, "
                f"|Σ N·score − 1| {sm:.1e})")
        except Exception:  # noqa: BLE001
            ok_all = False
            say(f"scores check {case}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    # speed, chained over layers (each layer's queries depend on the last scores)
    for label, h, m, k, layers in (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                                   ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8),
                                   ("decode 7B 32K", 32, 1, 1638, 16), ("decode 8B 32K", 8, 4, 1638, 16),
                                   ("decode 7B 128K", 32, 1, 6554, 16), ("decode 8B 128K", 8, 4, 6554, 16)):
        try:
            d = 128
            scale = 1.0 / d**0.5
            per, _ = timing_case(h, m, k, layers, 100)
            tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
            line = f"| {label} (H={h} M={m} K={k}) | XLA {tx:.1f} µs"
            for bm, bk, nw, st in (COMBOS if m > 16 else DECODE_COMBOS):
                for tg in TARGETS:
                    tk = per(lambda q, c, n: scores_call(q, c, n, scale, bm, bk, nw, st, tg))
                    line += f" | BM{bm} BK{bk} w{nw} s{st} T{tg} {tk:.1f} µs ({tx / tk:.2f}×)"
            say(line + " |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    if os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for bm, bk, nw, st in COMBOS + DECODE_COMBOS:
            for d in (64, 128):
                try:
                    zc, pc = lower_cfgs(d, bm, bk, nw, st)
                    for name, cfg in (("z", zc), ("p", pc)):
                        with open(os.path.join(outdir, f"scores_{name}_d{d}_m{bm}_k{bk}_w{nw}_s{st}.cfg"), "w") as fh:
                            fh.write(cfg)
                except Exception:  # noqa: BLE001
                    say(f"export D={d} {bm},{bk},{nw},{st} FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
        say(f"wrote {len(os.listdir(outdir))} scores configs to {outdir}")
    say(f"round 11 checks {'passed' if ok_all else 'FAILED'}")


def round12():
    """Kernels Z and P tuned apart (BM shared: P reads Z's partials by BM rows): each timed alone over a grid of
    (BM, BK, warps, stages) at the 128K shapes, then the best pair checked and timed at all four shapes against XLA,
    and exported (EXPORT=1) as scores_{z,p}_d{D}.cfg with the chosen parameters in scores.json."""
    import itertools
    say(f"\n## round 12 (cluster-score kernels Z and P tuned apart): jax {jax.__version__}, {jax.devices()}")
    shapes_ = (("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8))
    grid = [(bm, bk, nw, st) for bm, bk in itertools.product((64, 128), (64, 128, 256)) if (bm, bk) != (128, 256)
            for nw, st in ((4, 2), (4, 3), (8, 2))]
    tz, tp = {}, {}
    for label, h, m, k, layers in shapes_:
        d = 128
        scale = 1.0 / d**0.5
        per, first = timing_case(h, m, k, layers, 200)
        tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
        say(f"\n{label}: XLA {tx:.1f} µs a layer")
        for bm, bk, nw, st in grid:
            try:
                t = per(lambda q, c, n: scores_call(q, c, n, scale, bm, zcfg=(bk, nw, st), parts="z"))
                tz.setdefault((bm, bk, nw, st), []).append(t)
            except Exception as e:  # noqa: BLE001
                say(f"Z {bm},{bk},{nw},{st}: failed {str(e)[:200]}")
        zs = {bm: jax.jit(lambda q, c, n, bm=bm: scores_call(q, c, n, scale, bm, zcfg=(128, 4, 2), parts="z"))(*first) for bm in (64, 128)}
        for bm, bk, nw, st in grid:
            try:
                zz = zs[bm]
                t = per(lambda q, c, n, zz=zz: scores_call(q, c, n, scale, bm, zcfg=(128, 4, 2), pcfg=(bk, nw, st), parts=zz))
                tp.setdefault((bm, bk, nw, st), []).append(t)
            except Exception as e:  # noqa: BLE001
                say(f"P {bm},{bk},{nw},{st}: failed {str(e)[:200]}")
    grid_report(tz, tp, shapes_)
    bm, zc, pc = best_pair(tz, tp, len(shapes_), (64, 128))
    ok_all = check_pair(bm, zc, pc)
    for label, h, m, k, layers in INPUT_SHAPES:
        d = 128
        scale = 1.0 / d**0.5
        per, _ = timing_case(h, m, k, layers, 100)
        tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
        t11 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, 128, 4, 2))
        tb = per(lambda q, c, n: scores_call(q, c, n, scale, bm, zcfg=zc, pcfg=pc))
        say(f"| {label} | XLA {tx:.1f} µs | round 11 (64, 128, 4, 2) {t11:.1f} µs ({tx / t11:.2f}×) | best pair {tb:.1f} µs ({tx / tb:.2f}×) |")
    if os.environ.get("EXPORT"):
        export_pair(bm, zc, pc)
    say(f"round 12 checks {'passed' if ok_all else 'FAILED'}")


def round15():
    """The base-2 kernels (make_scores_z / make_scores_p with base2=True, the embedded contract unchanged) against round 12's
    embedded pair (BM 64, BK 128, 4 warps, 3 stages), each kernel alone and both, at the four input shapes, after
    the checks; EXPORT=1 writes the base-2 pair as scores_{z,p}_d{D}.cfg (and checks their IR against a second
    shape set)."""
    say(f"\n## round 15 (cluster-score kernels in base 2): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    for case, (h, m, k, d, tg) in enumerate(((3, 37, 50, 128, 528), (2, 512, 1638, 128, 10), (4, 100, 333, 64, 528),
                                             (8, 2048, 1638, 128, 528), (2, 300, 5000, 128, 4000))):
        q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
        scale = 1.0 / d**0.5
        want = xla_scores(q, cent, counts, scale)
        r12 = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, target=tg, zcfg=(128, 4, 3), pcfg=(128, 4, 3)))(q, cent, counts)
        got = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, target=tg, zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True))(q, cent, counts)
        err, ok = scores_error(got, want, counts)
        e12 = float(jnp.max(jnp.abs(got - r12)) / jnp.max(want))
        sm = float(jnp.max(jnp.abs(jnp.sum(got * counts, axis=1) - 1.0)))
        ok_all &= ok
        say(f"base-2 check {case} (H={h} M={m} K={k} D={d}): {'OK' if ok else 'FAIL'} (vs XLA {err:.1e}, vs round 12 {e12:.1e}, |Σ N·score − 1| {sm:.1e})")
    say("\n| shape | XLA | round 12 Z | base-2 Z | round 12 P | base-2 P | round 12 both | base-2 both (st 3) | base-2 both (st 2) | base-2 both (st 4) |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, h, m, k, layers in (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                                   ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8)):
        if os.environ.get("TIMING") == "0":  # checks and export only
            break
        try:
            d = 128
            scale = 1.0 / d**0.5
            per, first = timing_case(h, m, k, layers, 300)
            tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
            cfg = dict(zcfg=(128, 4, 3), pcfg=(128, 4, 3))
            tz = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", **cfg))
            tz2 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", fast=True, **cfg))
            zz = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", **cfg))(*first)
            tp = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts=zz, **cfg))
            tp2 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts=zz, fast=True, **cfg))
            tb = per(lambda q, c, n: scores_call(q, c, n, scale, 64, **cfg))
            tb2 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, fast=True, **cfg))
            tb22 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, zcfg=(128, 4, 2), pcfg=(128, 4, 2), fast=True))
            tb24 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, zcfg=(128, 4, 4), pcfg=(128, 4, 4), fast=True))
            say(f"| {label} | {tx:.1f} | {tz:.1f} | {tz2:.1f} | {tp:.1f} | {tp2:.1f} | {tb:.1f} | {tb2:.1f} ({tb / tb2:.2f}×) | {tb22:.1f} | {tb24:.1f} |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    if os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
            prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
            part = jax.ShapeDtypeStruct((64 * 64,), F32)
            z = make_scores_z(d, 64, 128, 4, 3, 1 << 16, 64, base2=True)
            pk = make_scores_p(d, 64, 128, 4, 3, 1 << 16, 64, base2=True)
            zc = p2.extract_config(jax.jit(z).lower(*a, jax.ShapeDtypeStruct((1 << 15,), F32), prm, sc).as_text())
            pc = p2.extract_config(jax.jit(pk).lower(*a, part, part, prm, sc).as_text())
            with open(os.path.join(outdir, f"scores_z_d{d}.cfg"), "w") as fh:
                fh.write(zc)
            with open(os.path.join(outdir, f"scores_p_d{d}.cfg"), "w") as fh:
                fh.write(pc)
            # the same kernels lowered for another shape set: the IR must not change
            a2 = (jax.ShapeDtypeStruct((999, d), BF16), jax.ShapeDtypeStruct((333, d), BF16))
            part2 = jax.ShapeDtypeStruct((7 * 64,), F32)
            z2 = make_scores_z(d, 64, 128, 4, 3, 999, 7, base2=True)
            pk2 = make_scores_p(d, 64, 128, 4, 3, 999, 7, base2=True)
            zc2 = p2.extract_config(jax.jit(z2).lower(*a2, jax.ShapeDtypeStruct((333,), F32), prm, sc).as_text())
            pc2 = p2.extract_config(jax.jit(pk2).lower(*a2, part2, part2, prm, sc).as_text())
            say(f"D={d}: base-2 IR equal for two shape sets: z {p2.ir_of(zc) == p2.ir_of(zc2)}, p {p2.ir_of(pc) == p2.ir_of(pc2)}")
        say(f"exported the base-2 pair to {outdir}")
    say(f"round 15 checks {'passed' if ok_all else 'FAILED'}")


def round16():
    """Session 13: kernels Z and P (base 2) timed apart over a grid that adds fewer warps and rows a program (more
    programs resident an SM) and deeper pipelines, at the LLaMA-2-7B shape, 128K and 32K (the cells still under the
    bar); their exponentials in half precision (ex2.approx.f16x2, two an instruction) beside; the best pair
    (BM shared) checked and timed against round 15's embedded pair (64, 128, 4, 3) at the four input shapes; with
    EXPORT=1 it is exported as scores_{z,p}_d{D}.cfg (+ scores.json) if it is at least 3% faster in sum."""
    say(f"\n## round 16 (cluster-score kernels: a wider grid, half-precision exponentials): jax {jax.__version__}, {jax.devices()}")
    shapes_ = (("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-2-7B 32K", 32, 512, 1638, 16))
    grid = [(32, 64, 2, 3), (32, 128, 2, 3), (32, 128, 2, 4), (32, 64, 4, 3), (32, 128, 4, 3),
            (64, 64, 4, 3), (64, 128, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3), (64, 64, 2, 3), (64, 128, 2, 3),
            (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 3)]
    tz, tp, t16 = {}, {}, {}
    for label, h, m, k, layers in shapes_:
        d = 128
        scale = 1.0 / d**0.5
        per, first = timing_case(h, m, k, layers, 400)
        tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
        say(f"{label}: XLA {tx:.1f} µs a layer")
        zs = {}
        for bm, bk, nw, st in grid:
            try:
                t = per(lambda q, c, n: scores_call(q, c, n, scale, bm, zcfg=(bk, nw, st), parts="z", fast=True))
                tz.setdefault((bm, bk, nw, st), []).append(t)
            except Exception as e:  # noqa: BLE001
                say(f"Z {bm},{bk},{nw},{st}: failed {str(e)[:200]}")
        for bm in sorted({g_[0] for g_ in grid}):
            zs[bm] = jax.jit(lambda q, c, n, bm=bm: scores_call(q, c, n, scale, bm, zcfg=(128, 4, 3), parts="z", fast=True))(*first)
        for bm, bk, nw, st in grid:
            try:
                zz = zs[bm]
                t = per(lambda q, c, n, zz=zz: scores_call(q, c, n, scale, bm, zcfg=(128, 4, 3), pcfg=(bk, nw, st), parts=zz, fast=True))
                tp.setdefault((bm, bk, nw, st), []).append(t)
            except Exception as e:  # noqa: BLE001
                say(f"P {bm},{bk},{nw},{st}: failed {str(e)[:200]}")
        try:  # half-precision exponentials at round 15's config
            cfg = dict(zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True)
            t16.setdefault("Z f16", []).append(per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", f16z=True, **cfg)))
            zz = zs[64]
            t16.setdefault("P f16", []).append(per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts=zz, f16p=True, **cfg)))
            t16.setdefault("both f32", []).append(per(lambda q, c, n: scores_call(q, c, n, scale, 64, **cfg)))
            t16.setdefault("both f16", []).append(per(lambda q, c, n: scores_call(q, c, n, scale, 64, f16z=True, f16p=True, **cfg)))
        except Exception:  # noqa: BLE001
            say(f"f16 timing FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
    grid_report(tz, tp, shapes_)
    for name, ts in t16.items():
        say(f"| {name} (64, 128, 4, 3) | | | | | " + " | ".join(f"{t:.1f}" for t in ts) + f" | {sum(ts):.1f} |")
    # f16 accuracy: error against XLA and the top-10% choice
    try:
        for case, (h, m, k) in enumerate(((8, 512, 1638), (4, 2048, 6554))):
            q, cent, counts = case_data(jax.random.PRNGKey(50 + case), h, m, k, 128)
            scale = 1.0 / 128**0.5
            want = xla_scores(q, cent, counts, scale)
            got = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True, f16z=True, f16p=True))(q, cent, counts)
            err = float(jnp.max(jnp.abs(got - want)) / jnp.max(want))
            kk = k // 10
            tw = jax.lax.top_k(want, kk)[1]
            tg = jax.lax.top_k(got, kk)[1]
            same = float(jnp.mean(jnp.array([jnp.isin(tg[i], tw[i]).mean() for i in range(h)])))
            say(f"f16 exponentials, H={h} M={m} K={k}: max err / max {err:.1e}, top-10% clusters shared with XLA's {same:.4f}")
    except Exception:  # noqa: BLE001
        say(f"f16 check FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
    bm, zc, pc = best_pair(tz, tp, len(shapes_), sorted({g_[0] for g_ in grid}))
    ok_all = check_pair(bm, zc, pc, fast=True, empty_zero=True)
    gain = []
    say("\n| shape | XLA | round 15 pair | best pair | best pair, 1,056 programs |\n|---|---:|---:|---:|---:|")
    for label, h, m, k, layers in INPUT_SHAPES:
        d = 128
        scale = 1.0 / d**0.5
        per, _ = timing_case(h, m, k, layers, 100)
        tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
        t15 = per(lambda q, c, n: scores_call(q, c, n, scale, 64, zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True))
        tb = per(lambda q, c, n: scores_call(q, c, n, scale, bm, zcfg=zc, pcfg=pc, fast=True))
        tb2 = per(lambda q, c, n: scores_call(q, c, n, scale, bm, zcfg=zc, pcfg=pc, fast=True, target=1056))
        gain.append((t15, tb))
        say(f"| {label} | {tx:.1f} | {t15:.1f} | {tb:.1f} ({t15 / tb:.2f}×) | {tb2:.1f} ({t15 / tb2:.2f}×) |")
    faster = sum(a for a, _ in gain) > 1.03 * sum(b for _, b in gain)
    if os.environ.get("EXPORT") and ok_all and faster:
        export_pair(bm, zc, pc, base2=True)
    say(f"round 16 checks {'passed' if ok_all else 'FAILED'}; best pair {'faster' if faster else 'not faster'} than round 15's by 3%")


def round17():
    """Kernel Z with a fixed reference (make_scores_z_ref) against round 15's (both base 2, (64, 128, 4 warps, 3
    stages)): checks (the usual five cases, huge logits that force the fallback, a share whose first block is empty),
    Z alone and the pair with round 15's P timed at the four input shapes, and with EXPORT=1 scores_z_d{64,128}.cfg of
    the new Z if the checks passed and the pair is at least 3% faster in sum."""
    say(f"\n## round 17 (kernel Z with a fixed reference): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    cfg = dict(zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True)
    cases = [(3, 37, 50, 128, 528, 1.0), (2, 512, 1638, 128, 10, 1.0), (4, 100, 333, 64, 528, 1.0),
             (8, 2048, 1638, 128, 528, 1.0), (2, 300, 5000, 128, 4000, 1.0), (2, 256, 1638, 128, 528, 300.0),
             (2, 64, 700, 128, 528, 1.0)]
    for case, (h, m, k, d, tg, amp) in enumerate(cases):
        try:
            q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
            q = (q.astype(F32) * amp).astype(BF16)
            if case == 6:  # one block a split (KS 6): the third split's, centroids 256..383, holds only empty clusters
                counts = counts.at[:, 256:384].set(0.0)
            scale = 1.0 / d**0.5
            want = xla_scores(q, cent, counts, scale)
            r15 = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, target=tg, **cfg))(q, cent, counts)
            got = jax.jit(lambda q, c, n: scores_call(q, c, n, scale, 64, target=tg, zref=True, **cfg))(q, cent, counts)
            err, ok = scores_error(got, want, counts)
            e15 = float(jnp.max(jnp.abs(got - r15)) / jnp.max(want))
            ok_all &= ok
            say(f"fixed-reference check {case} (H={h} M={m} K={k} D={d} logits ×{amp:g}): {'OK' if ok else 'FAIL'} "
                f"(vs XLA {err:.1e}, vs round 15 {e15:.1e})")
        except Exception:  # noqa: BLE001
            ok_all = False
            say(f"fixed-reference check {case}: FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    say("\n| shape | XLA | round 15 Z | fixed-ref Z | round 15 pair | fixed-ref Z + round 15 P |\n|---|---:|---:|---:|---:|---:|")
    tot15 = totnew = 0.0
    for label, h, m, k, layers in INPUT_SHAPES:
        try:
            d = 128
            scale = 1.0 / d**0.5
            per, _ = timing_case(h, m, k, layers, 500)
            tx = per(lambda q, c, n: xla_scores(q, c, n, scale))
            tz = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", **cfg))
            tzn = per(lambda q, c, n: scores_call(q, c, n, scale, 64, parts="z", zref=True, **cfg))
            tb = per(lambda q, c, n: scores_call(q, c, n, scale, 64, **cfg))
            tbn = per(lambda q, c, n: scores_call(q, c, n, scale, 64, zref=True, **cfg))
            tot15 += tb
            totnew += tbn
            say(f"| {label} | {tx:.1f} | {tz:.1f} | {tzn:.1f} ({tz / tzn:.2f}×) | {tb:.1f} | {tbn:.1f} ({tb / tbn:.2f}×) |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
            ok_all = False
    faster = totnew > 0 and tot15 > 1.03 * totnew
    if os.environ.get("EXPORT") and ok_all and faster:
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
            prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
            z = make_scores_z_ref(d, 64, 128, 4, 3, 1 << 16, 64)
            with open(os.path.join(outdir, f"scores_z_d{d}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(z).lower(*a, jax.ShapeDtypeStruct((1 << 15,), F32), prm, sc).as_text()))
        say(f"exported the fixed-reference Z to {outdir}")
    say(f"round 17 checks {'passed' if ok_all else 'FAILED'}; pair {'faster' if faster else 'not faster'} than round 15's by 3% "
        f"({tot15:.1f} against {totnew:.1f} µs in sum)")


@functools.lru_cache(maxsize=None)
def make_scores_pr(d, bm, bk, num_warps=4, num_stages=3, programs=64, out_static=64 * 128, debug=False):
    """Round 28 (session 18): kernel P by row blocks, in Z's launch. Program p = h·nMB + mb holds the BM rows mb·BM ..
    of head h (their log2 Z from Z's KS partials, +Inf for padding rows) and walks all of the head's centroid blocks
    as Z does, each block's logits transposed ([BK centroids, BM rows], so that a centroid's sum over the rows is a
    reduction within a row of the product's layout, not across warps), and writes the block's BK sums of
    ex2(logit − log2 Z): output [P·Kp] f32 (Kp = nKB·BK), which XLA sums over the nMB row blocks. The same operands
    as make_scores_p (q, c, mx, sm, prm, scale); prm[3] is the blocks of BK centroids."""

    def kernel(q_ref, c_ref, mx_ref, sm_ref, prm_ref, scale_ref, o_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb, ks_n = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3], prm_ref[7]
        scale2 = scale_ref[0] * LOG2E
        h = pid // nmb
        mb = pid % nmb
        m_idx = mb * bm + jnp.arange(bm, dtype=I32)
        ok = m_idx < m_rows
        q = q_ref[h * m_rows + jnp.minimum(m_idx, m_rows - 1), :]
        base = (h * nmb + mb) * ks_n * bm + jnp.arange(bm, dtype=I32)

        def comb(j, zc):
            z, l = zc
            mj = mx_ref[base + j * bm]
            sj = sm_ref[base + j * bm]
            zn = jnp.maximum(z, mj)
            return zn, l * jnp.exp(z - zn) + sj * jnp.exp(mj - zn)

        z, l = lax.fori_loop(0, ks_n, comb, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))
        lz2 = jnp.where(ok, (z + jnp.log(jnp.maximum(l, 1e-30))) * LOG2E, jnp.inf)
        kp = nkb * bk

        def body(kb, carry):
            kk = kb * bk + jnp.arange(bk, dtype=I32)
            c = c_ref[h * k_cl + jnp.minimum(kk, k_cl - 1), :]
            lt = lax.dot_general(c, q, (((1,), (1,)), ((), ())), preferred_element_type=F32) * scale2  # [BK, BM]
            o_ref[pl.ds(pid * kp + kb * bk, bk)] = jnp.sum(jnp.exp2(lt - lz2[None, :]), axis=1)
            return carry

        lax.fori_loop(0, nkb, body, jnp.int32(0))

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((out_static,), F32),
        grid=(programs,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def scores_call_r28(q, cent, counts, scale, pr=None, zonly=False, zparts=None, zref=False):
    """ClusterScores as the engine runs it since session 17 (Z in one wave: KS = max(1, min(nKB, 264 // (H·nMB))),
    P by round 12's rule, base 2, (64, 128, 4 warps, 3 stages)), or with pr = (warps, stages) kernel P by row blocks
    (make_scores_pr) instead of P; zref: round 17's Z with a fixed reference (make_scores_z_ref) instead of Z."""
    h, m, d = q.shape
    k = cent.shape[1]
    bm, bk = 64, 128
    nmb, nkb = -(-m // bm), -(-k // bk)
    ks = max(1, min(nkb, 264 // (h * nmb)))
    ms = max(1, min(nmb, -(-528 // (h * nkb))))
    prm = jnp.array([m, k, nmb, nkb, ms, nmb * bm, nkb, ks], I32)
    sc = jnp.array([scale], F32)
    qf, cf = q.reshape(h * m, d), cent.reshape(h * k, d)
    if zparts is None:
        zk = make_scores_z_ref(d, bm, bk, 4, 3, h * m, h * nmb * ks) if zref else \
            make_scores_z(d, bm, bk, 4, 3, h * m, h * nmb * ks, base2=True)
        mx, sm = zk(qf, cf, counts.reshape(-1), prm, sc)
    else:
        mx, sm = zparts
    if zonly:
        return mx, sm
    if pr is None:
        part = make_scores_p(d, bm, bk, 4, 3, h * m, h * nkb * ms, base2=True)(qf, cf, mx, sm, prm, sc)
        s_ = jnp.sum(part.reshape(h, nkb, ms, bk), axis=2).reshape(h, nkb * bk)
    else:
        part = make_scores_pr(d, bm, bk, pr[0], pr[1], h * nmb, h * nmb * nkb * bk)(qf, cf, mx, sm, prm, sc)
        s_ = jnp.sum(part.reshape(h, nmb, nkb * bk), axis=1)
    s_ = s_[:, :k] / m
    return jnp.where(counts > 0, s_, 0.0)


PR_CONFIGS = [(4, 3), (4, 2), (8, 3), (8, 2)]


def round28():
    """Kernel P by row blocks (make_scores_pr) against the embedded P after the same Z: checks against XLA's scores
    (empty clusters, ragged sizes, Z splits), the pair and P alone timed at the four input shapes; EXPORT=1 writes the
    fastest passing (warps, stages), or PICK=W,S, as scores_pr_d{64,128}.cfg (+ scores_pr.json)."""
    import json
    say(f"\n## round 28 (kernel P by row blocks, in Z's launch): jax {jax.__version__}, {jax.devices()}")
    picks = PR_CONFIGS
    if os.environ.get("PICK"):
        picks = [tuple(int(x) for x in os.environ["PICK"].split(","))]
    passing = []
    for pr in picks:
        ok_all, worst = True, 0.0
        try:
            for case, (h, m, k, d) in enumerate(((3, 37, 50, 128), (2, 512, 1638, 128), (4, 100, 333, 64),
                                                 (8, 2048, 1638, 128), (2, 300, 5000, 128), (1, 64, 129, 64))):
                q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
                scale = 1.0 / d**0.5
                want = xla_scores(q, cent, counts, scale)
                got = jax.jit(lambda q, c, n: scores_call_r28(q, c, n, scale, pr=pr))(q, cent, counts)
                err, ok = scores_error(got, want, counts)
                ok_all &= ok
                worst = max(worst, err)
        except Exception:  # noqa: BLE001
            say(f"check {pr} FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
            continue
        say(f"check {pr}: {'pass' if ok_all else 'FAIL'} (relative {worst:.1e})")
        if ok_all:
            passing.append(pr)
    totals = {pr: 0.0 for pr in passing}
    say("\n| shape | Z + P (embedded) | P alone | " + " | ".join(f"Z + P' {pr}" for pr in passing) + " | " +
        " | ".join(f"P' {pr} alone" for pr in passing) + " |")
    say("|---|---:|---:|" + "---:|" * (2 * len(passing)))
    for label, h, m, k, layers in (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                                   ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8)):
        try:
            scale = 1.0 / 128**0.5
            per, first = timing_case(h, m, k, layers, 300)
            tb = per(lambda q, c, n: scores_call_r28(q, c, n, scale))
            zz = jax.jit(lambda q, c, n: scores_call_r28(q, c, n, scale, zonly=True))(*first)
            tp = per(lambda q, c, n: scores_call_r28(q, c, n, scale, zparts=zz))
            pairs, alone = [], []
            for pr in passing:
                t2 = per(lambda q, c, n, pr=pr: scores_call_r28(q, c, n, scale, pr=pr))
                t3 = per(lambda q, c, n, pr=pr: scores_call_r28(q, c, n, scale, pr=pr, zparts=zz))
                totals[pr] += t2
                pairs.append(f"{t2:.1f} ({tb / t2:.2f}×)")
                alone.append(f"{t3:.1f}")
            say(f"| {label} | {tb:.1f} | {tp:.1f} | " + " | ".join(pairs) + " | " + " | ".join(alone) + " |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    if passing and os.environ.get("EXPORT"):
        best = passing[0] if os.environ.get("PICK") else min(passing, key=lambda pr: totals[pr])
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
            prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
            part = jax.ShapeDtypeStruct((64 * 64,), F32)
            pk = make_scores_pr(d, 64, 128, best[0], best[1], 64, 64 * 128)
            with open(os.path.join(outdir, f"scores_pr_d{d}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(pk).lower(*a, part, part, prm, sc).as_text()))
        with open(os.path.join(outdir, "scores_pr.json"), "w") as fh:
            json.dump({"bm": 64, "bk": 128, "warps": best[0], "stages": best[1]}, fh)
        say(f"exported P' {best} to {outdir}")


def _pr_block_sums(c_ref, q, h, k_cl, kb, bk, scale2, lz2):
    """Kernel P by row blocks' work on centroid block kb (as in make_scores_pr, whose embedded source stays as it was
    lowered): the block's logits transposed ([BK, BM]) and each centroid's sum of ex2(logit − log2 Z) over the rows."""
    kk = kb * bk + jnp.arange(bk, dtype=I32)
    c = c_ref[h * k_cl + jnp.minimum(kk, k_cl - 1), :]
    lt = lax.dot_general(c, q, (((1,), (1,)), ((), ())), preferred_element_type=F32) * scale2  # [BK, BM]
    return jnp.sum(jnp.exp2(lt - lz2[None, :]), axis=1)


@functools.lru_cache(maxsize=None)
def make_scores_zp(d, bm, bk, num_warps=4, num_stages=3, programs=64, out_static=64 * 128, debug=False):
    """Round 29 (session 18): kernels Z and P by row blocks in one program (for one centroid split, KS = 1): program
    p = h·nMB + mb walks its head's centroid blocks twice, first for its rows' log2 Z (Z's running maximum and sum in
    base 2, the counts' bias log2 N), then as make_scores_pr. Operands q [Nq, D], c [Nc, D] bf16, counts [Nc] f32,
    prm [8] i32 (Z's), scale [1] f32; output [P·Kp] f32 as make_scores_pr's."""

    def kernel(q_ref, c_ref, n_ref, prm_ref, scale_ref, o_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3]
        scale2 = scale_ref[0] * LOG2E
        h = pid // nmb
        mb = pid % nmb
        m_idx = mb * bm + jnp.arange(bm, dtype=I32)
        ok = m_idx < m_rows
        q = q_ref[h * m_rows + jnp.minimum(m_idx, m_rows - 1), :]

        def zbody(i, carry):
            mx, sm = carry
            kk = i * bk + jnp.arange(bk, dtype=I32)
            crow = h * k_cl + jnp.minimum(kk, k_cl - 1)
            c = c_ref[crow, :]
            cnt = n_ref[crow]
            bias = jnp.where((kk < k_cl) & (cnt > 0), jnp.log2(jnp.maximum(cnt, 1.0)), NEG)
            lg = _logits(q, c, scale2) + bias[None, :]
            m_new = jnp.maximum(mx, jnp.max(lg, axis=1))
            return m_new, sm * jnp.exp2(mx - m_new) + jnp.sum(jnp.exp2(lg - m_new[:, None]), axis=1)

        mx, sm = lax.fori_loop(0, nkb, zbody, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))
        lz2 = jnp.where(ok, mx + jnp.log2(jnp.maximum(sm, 1e-30)), jnp.inf)
        kp = nkb * bk

        def body(kb, carry):
            o_ref[pl.ds(pid * kp + kb * bk, bk)] = _pr_block_sums(c_ref, q, h, k_cl, kb, bk, scale2, lz2)
            return carry

        lax.fori_loop(0, nkb, body, jnp.int32(0))

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((out_static,), F32),
        grid=(programs,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def scores_call_zp(q, cent, counts, scale, cfg=(4, 3)):
    """ClusterScores through the fused kernel (one program a KV head and 64 rows, both passes)."""
    h, m, d = q.shape
    k = cent.shape[1]
    bm, bk = 64, 128
    nmb, nkb = -(-m // bm), -(-k // bk)
    prm = jnp.array([m, k, nmb, nkb, 1, nmb * bm, nkb, 1], I32)
    part = make_scores_zp(d, bm, bk, cfg[0], cfg[1], h * nmb, h * nmb * nkb * bk)(
        q.reshape(h * m, d), cent.reshape(h * k, d), counts.reshape(-1), prm, jnp.array([scale], F32))
    s_ = jnp.sum(part.reshape(h, nmb, nkb * bk), axis=1)[:, :k] / m
    return jnp.where(counts > 0, s_, 0.0)


def round29():
    """The fused kernel (make_scores_zp) against Z + P by row blocks (the embedded pair since round 28) at the four
    input shapes, after the checks; EXPORT=1 writes the fastest passing (warps, stages), or PICK=W,S, as
    scores_zp_d{64,128}.cfg (+ scores_zp.json)."""
    import json
    say(f"\n## round 29 (Z and P by row blocks in one kernel): jax {jax.__version__}, {jax.devices()}")
    picks = [(4, 3), (4, 2), (8, 3)]
    if os.environ.get("PICK"):
        picks = [tuple(int(x) for x in os.environ["PICK"].split(","))]
    passing = []
    for cfg in picks:
        ok_all, worst = True, 0.0
        try:
            for case, (h, m, k, d) in enumerate(((3, 37, 50, 128), (2, 512, 1638, 128), (4, 100, 333, 64),
                                                 (8, 2048, 1638, 128), (2, 300, 5000, 128), (1, 64, 129, 64))):
                q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
                scale = 1.0 / d**0.5
                want = xla_scores(q, cent, counts, scale)
                got = jax.jit(lambda q, c, n: scores_call_zp(q, c, n, scale, cfg))(q, cent, counts)
                err, ok = scores_error(got, want, counts)
                ok_all &= ok
                worst = max(worst, err)
        except Exception:  # noqa: BLE001
            say(f"check {cfg} FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
            continue
        say(f"check {cfg}: {'pass' if ok_all else 'FAIL'} (relative {worst:.1e})")
        if ok_all:
            passing.append(cfg)
    totals = {cfg: 0.0 for cfg in passing}
    say("\n| shape | Z + P by rows (embedded) | " + " | ".join(f"fused {c}" for c in passing) + " |")
    say("|---|---:|" + "---:|" * len(passing))
    for label, h, m, k, layers in (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                                   ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8)):
        try:
            scale = 1.0 / 128**0.5
            per, _ = timing_case(h, m, k, layers, 300)
            tb = per(lambda q, c, n: scores_call_r28(q, c, n, scale, pr=(4, 3)))
            cells = []
            for cfg in passing:
                t2 = per(lambda q, c, n, cfg=cfg: scores_call_zp(q, c, n, scale, cfg))
                totals[cfg] += t2
                cells.append(f"{t2:.1f} ({tb / t2:.2f}×)")
            say(f"| {label} | {tb:.1f} | " + " | ".join(cells) + " |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    if passing and os.environ.get("EXPORT"):
        best = passing[0] if os.environ.get("PICK") else min(passing, key=lambda c: totals[c])
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16),
                 jax.ShapeDtypeStruct((1 << 15,), F32), jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32))
            zp = make_scores_zp(d, 64, 128, best[0], best[1], 64, 64 * 128)
            with open(os.path.join(outdir, f"scores_zp_d{d}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(zp).lower(*a).as_text()))
        with open(os.path.join(outdir, "scores_zp.json"), "w") as fh:
            json.dump({"bm": 64, "bk": 128, "warps": best[0], "stages": best[1]}, fh)
        say(f"exported the fused kernel {best} to {outdir}")


def round30():
    """Session 19 (call 1; prepared in session 18): round 17's Z with a fixed reference (make_scores_z_ref, the same contract as
    the embedded Z) before P by row blocks, against the embedded pair (Z, P by row blocks), both with one-wave Z
    splits; checks against XLA's scores (with logits ×300, where the reference's sum would overflow and the kernel's
    fallback runs); EXPORT=1 writes it as scores_z_d{64,128}.cfg to $OUT/kernels, for the engine through
    SQLLM_KERNEL_DIR."""
    say(f"\n## round 30 (Z with a fixed reference, before P by row blocks): jax {jax.__version__}, {jax.devices()}")
    ok_all, worst = True, 0.0
    for case, (h, m, k, d, mult) in enumerate(((3, 37, 50, 128, 1.0), (2, 512, 1638, 128, 1.0), (4, 100, 333, 64, 1.0),
                                               (8, 2048, 1638, 128, 1.0), (2, 300, 5000, 128, 1.0), (2, 128, 700, 128, 300.0))):
        q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
        q = (q.astype(F32) * mult).astype(BF16)
        scale = 1.0 / d**0.5
        want = xla_scores(q, cent, counts, scale)
        got = jax.jit(lambda q, c, n: scores_call_r28(q, c, n, scale, pr=(4, 3), zref=True))(q, cent, counts)
        err, ok = scores_error(got, want, counts)
        ok_all &= ok
        worst = max(worst, err)
    say(f"checks: {'pass' if ok_all else 'FAIL'} (relative {worst:.1e})")
    say("\n| shape | Z + P by rows (embedded) | Z with a reference + P by rows | Z alone | Z with a reference alone |")
    say("|---|---:|---:|---:|---:|")
    for label, h, m, k, layers in (("LLaMA-2-7B 32K", 32, 512, 1638, 16), ("LLaMA-3-8B 32K", 8, 2048, 1638, 16),
                                   ("LLaMA-2-7B 128K", 32, 512, 6554, 8), ("LLaMA-3-8B 128K", 8, 2048, 6554, 8)):
        try:
            scale = 1.0 / 128**0.5
            per, _ = timing_case(h, m, k, layers, 300)
            tb = per(lambda q, c, n: scores_call_r28(q, c, n, scale, pr=(4, 3)))
            tr = per(lambda q, c, n: scores_call_r28(q, c, n, scale, pr=(4, 3), zref=True))
            tz = per(lambda q, c, n: scores_call_r28(q, c, n, scale, zonly=True))
            tzr = per(lambda q, c, n: scores_call_r28(q, c, n, scale, zonly=True, zref=True))
            say(f"| {label} | {tb:.1f} | {tr:.1f} ({tb / tr:.2f}×) | {tz:.1f} | {tzr:.1f} |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    if ok_all and os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
            prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
            z = make_scores_z_ref(d, 64, 128, 4, 3, 1 << 16, 64)
            with open(os.path.join(outdir, f"scores_z_d{d}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(z).lower(*a, jax.ShapeDtypeStruct((1 << 15,), F32), prm, sc).as_text()))
        say(f"exported Z with a reference to {outdir}")


@functools.lru_cache(maxsize=None)
def make_scores_pr2(d, bm, bk, num_warps=4, num_stages=3, programs=64, out_static=64 * 128, debug=False):
    """Round 31 (session 19; embedded as scores_pr_d*.cfg.gz): kernel P by row blocks in Z's whole launch, centroid splits
    included. Program p = (h·nMB + mb)·KS + ks holds the BM rows mb·BM .. of head h (their log2 Z from all KS of Z's
    partials) and walks only its share of the head's centroid blocks, [ks·per, min(nKB, (ks+1)·per)), per = ⌈nKB /
    KS⌉, writing each block's sums where make_scores_pr does: the same output [H·nMB·Kp]. With KS = 1 it is
    make_scores_pr; with KS > 1 (a short input) it keeps Z's programs busy where make_scores_pr would leave a few
    programs walking every block."""

    def kernel(q_ref, c_ref, mx_ref, sm_ref, prm_ref, scale_ref, o_ref):
        pid = pl.program_id(0)
        m_rows, k_cl, nmb, nkb, ks_n = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3], prm_ref[7]
        scale2 = scale_ref[0] * LOG2E
        ks = pid % ks_n
        hm = pid // ks_n
        h = hm // nmb
        mb = hm % nmb
        m_idx = mb * bm + jnp.arange(bm, dtype=I32)
        ok = m_idx < m_rows
        q = q_ref[h * m_rows + jnp.minimum(m_idx, m_rows - 1), :]
        base = hm * ks_n * bm + jnp.arange(bm, dtype=I32)

        def comb(j, zc):
            z, l = zc
            mj = mx_ref[base + j * bm]
            sj = sm_ref[base + j * bm]
            zn = jnp.maximum(z, mj)
            return zn, l * jnp.exp(z - zn) + sj * jnp.exp(mj - zn)

        z, l = lax.fori_loop(0, ks_n, comb, (jnp.full((bm,), NEG, F32), jnp.zeros((bm,), F32)))
        lz2 = jnp.where(ok, (z + jnp.log(jnp.maximum(l, 1e-30))) * LOG2E, jnp.inf)
        kp = nkb * bk
        per = (nkb + ks_n - 1) // ks_n
        first = ks * per

        def body(i, carry):
            kb = first + i
            o_ref[pl.ds(hm * kp + kb * bk, bk)] = _pr_block_sums(c_ref, q, h, k_cl, kb, bk, scale2, lz2)
            return carry

        lax.fori_loop(0, jnp.maximum(jnp.minimum(per, nkb - first), 0), body, jnp.int32(0))

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((out_static,), F32),
        grid=(programs,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def scores_call_r31(q, cent, counts, scale, mode):
    """ClusterScores with one-wave Z splits, then mode "blocks" (kernel P by centroid blocks), "rows" (make_scores_pr,
    one program a row block) or "rows2" (make_scores_pr2, Z's launch with its splits)."""
    h, m, d = q.shape
    k = cent.shape[1]
    bm, bk = 64, 128
    nmb, nkb = -(-m // bm), -(-k // bk)
    ks = max(1, min(nkb, 264 // (h * nmb)))
    ms = max(1, min(nmb, -(-528 // (h * nkb))))
    prm = jnp.array([m, k, nmb, nkb, ms, nmb * bm, nkb, ks], I32)
    sc = jnp.array([scale], F32)
    qf, cf = q.reshape(h * m, d), cent.reshape(h * k, d)
    mx, sm = make_scores_z(d, bm, bk, 4, 3, h * m, h * nmb * ks, base2=True)(qf, cf, counts.reshape(-1), prm, sc)
    if mode == "blocks":
        part = make_scores_p(d, bm, bk, 4, 3, h * m, h * nkb * ms, base2=True)(qf, cf, mx, sm, prm, sc)
        s_ = jnp.sum(part.reshape(h, nkb, ms, bk), axis=2).reshape(h, nkb * bk)
    else:
        kern = make_scores_pr(d, bm, bk, 4, 3, h * nmb, h * nmb * nkb * bk) if mode == "rows" else \
            make_scores_pr2(d, bm, bk, 4, 3, h * nmb * ks, h * nmb * nkb * bk)
        s_ = jnp.sum(kern(qf, cf, mx, sm, prm, sc).reshape(h, nmb, nkb * bk), axis=1)
    s_ = s_[:, :k] / m
    return jnp.where(counts > 0, s_, 0.0)


def round31():
    """Session 19 (call 1; prepared in session 18): make_scores_pr2 against kernel P by centroid blocks (what the engine runs
    where Z splits the centroids) and make_scores_pr (what it runs where Z does not), at short inputs (64 tokens:
    7B 64 rows a KV head, 8B 256) and the benchmark's 512-token inputs, 32K and 128K; checks against XLA's scores
    first (Z splits included); EXPORT=1 writes it as scores_pr_d{64,128}.cfg (the engine would launch it over Z's
    programs: a Go change, scoresKernel and emulateScores's "pr" case); TIMINGS=0 skips the timings."""
    say(f"\n## round 31 (P by row blocks with Z's centroid splits): jax {jax.__version__}, {jax.devices()}")
    ok_all, worst = True, 0.0
    for case, (h, m, k, d) in enumerate(((3, 37, 50, 128), (2, 512, 1638, 128), (4, 100, 333, 64), (8, 2048, 1638, 128),
                                         (2, 300, 5000, 128), (1, 64, 129, 64), (32, 64, 6554, 128), (8, 256, 1638, 64))):
        q, cent, counts = case_data(jax.random.PRNGKey(case), h, m, k, d)
        scale = 1.0 / d**0.5
        want = xla_scores(q, cent, counts, scale)
        got = jax.jit(lambda q, c, n: scores_call_r31(q, c, n, scale, "rows2"))(q, cent, counts)
        err, ok = scores_error(got, want, counts)
        ok_all &= ok
        worst = max(worst, err)
    say(f"checks: {'pass' if ok_all else 'FAIL'} (relative {worst:.1e})")
    timed = () if os.environ.get("TIMINGS") == "0" else (
        ("7B 32K, 64 tokens", 32, 64, 1638, 16), ("7B 128K, 64 tokens", 32, 64, 6554, 8),
        ("8B 32K, 64 tokens", 8, 256, 1638, 16), ("8B 128K, 64 tokens", 8, 256, 6554, 8),
        ("7B 32K, 512 tokens", 32, 512, 1638, 16), ("7B 128K, 512 tokens", 32, 512, 6554, 8),
        ("8B 32K, 512 tokens", 8, 2048, 1638, 16), ("8B 128K, 512 tokens", 8, 2048, 6554, 8))
    if timed:
        say("\n| shape, input | Z + P by blocks | Z + P by rows | Z + P by rows with Z's splits |")
        say("|---|---:|---:|---:|")
    for label, h, m, k, layers in timed:
        try:
            scale = 1.0 / 128**0.5
            per, _ = timing_case(h, m, k, layers, 300)
            t = [per(lambda q, c, n, md=md: scores_call_r31(q, c, n, scale, md)) for md in ("blocks", "rows", "rows2")]
            say(f"| {label} | {t[0]:.1f} | {t[1]:.1f} | {t[2]:.1f} |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
    if ok_all and os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            a = (jax.ShapeDtypeStruct((1 << 16, d), BF16), jax.ShapeDtypeStruct((1 << 15, d), BF16))
            prm, sc = jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1,), F32)
            part = jax.ShapeDtypeStruct((64 * 64,), F32)
            pk = make_scores_pr2(d, 64, 128, 4, 3, 64, 64 * 128)
            with open(os.path.join(outdir, f"scores_pr_d{d}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(pk).lower(*a, part, part, prm, sc).as_text()))
        say(f"exported P by row blocks with Z's splits to {outdir}")


if __name__ == "__main__":
    {"11": round11, "12": round12, "15": round15, "16": round16, "17": round17,
     "28": round28, "29": round29, "30": round30, "31": round31}[os.environ.get("ROUND", "12")]()
