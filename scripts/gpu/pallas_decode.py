"""Round 13 (session 11): a decode step's lookup in three kernels instead of XLA's scores + two selection kernels.

A decode step (1 query row a KV head for LLaMA-2-7B, 4 for LLaMA-3-8B) spends about half its squeezed attention in the
lookup at 32K (session 11, call 1: 35.3 of 66.0 µs a layer at 7B): XLA's cluster scores (a product and two or three
fusions) and the two selection kernels (squeeze/selectk.go). Here the scores are fused into the selection:
- logits, grid (H·nCB,): one program per (KV head, BC centroids) writes the M rows' scaled logits q·C [H·M·Kp] f32
  (padding clusters -1e30): CUDA-core products, one pass over the centroids;
- select_a2, grid (H,): kernel A (pallas_select.make_select_a) that starts from the logits instead of the score bits:
  each row's count-weighted log-sum-exp, the clusters' mean probability over the rows (ClusterScores), its bits, then
  kernel A's boundary, taken keys and running sum;
- kernel B (pallas_select.make_select_b) unchanged.
Checks select_a2's taken counts against kernel A's on XLA's scores (the same up to ties that exp's rounding makes
differently), and times logits + A2 + B against XLA's scores + A + B, chained over layers, at the 7B / 8B shapes.
Nothing is exported: a first look at what the fusion gains. Run on the GPU machine: python3 scripts/gpu/pallas_decode.py
Ran in session 11 (call 7): the same taken counts everywhere, 1.06× / 1.13× faster at 32K (7B / 8B), slower at 128K
(BENCHMARKS.md); not pursued. (write_taken was factored out of kernel A afterwards; the same traced code.)
"""
import functools
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_select as psel  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

F32, I32, BF16 = jnp.float32, jnp.int32, jnp.bfloat16
NEG = -1e30
say = ps.say
BC = 256  # centroids per logits program


@functools.lru_cache(maxsize=None)
def make_logits(m, d, kp, p_static=64, num_warps=4):
    """q [H·M, D], c [H·K, D] bf16, prm [2] i32 (K, nCB), scale [1] f32 → logits [H·M·Kp] f32 (Kp = nCB·BC; the
    clusters ≥ K get -1e30)."""

    def kernel(q_ref, c_ref, prm_ref, scale_ref, o_ref):
        pid = pl.program_id(0)
        k_cl, ncb = prm_ref[0], prm_ref[1]
        h = pid // ncb
        cb = pid % ncb
        kk = cb * BC + jnp.arange(BC, dtype=I32)
        c = c_ref[h * k_cl + jnp.minimum(kk, k_cl - 1), :].astype(F32)  # [BC, D]
        for r in range(m):
            qr = q_ref[h * m + r, :].astype(F32)
            lg = jnp.sum(c * qr[None, :], axis=1) * scale_ref[0]
            o_ref[pl.ds((h * m + r) * kp + cb * BC, BC)] = jnp.where(kk < k_cl, lg, NEG)

    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((p_static * m * BC,), F32), grid=(p_static,),
                          compiler_params=ps.compiler_params(num_warps, 2))


@functools.lru_cache(maxsize=None)
def make_select_a2(kp, m, h_static=8, num_warps=4):
    """logits [H·M·Kp] f32, counts [H·Kp] int32, prm [2] int32 (budget, unused) → ends, w [H·Kp], total [H] int32, as
    kernel A from the score bits it computes: score_c = mean over the rows of exp(l_c − logZ_row) (0 when empty)."""

    def kernel(lg_ref, counts_ref, prm_ref, ends_ref, w_ref, total_ref):
        h = pl.program_id(0)
        budget = prm_ref[0]
        cnt = counts_ref[pl.ds(h * kp, kp)]
        ne = cnt > 0
        logn = jnp.where(ne, jnp.log(jnp.maximum(cnt, 1).astype(F32)), NEG)
        acc = jnp.zeros((kp,), F32)
        for r in range(m):
            lg = lg_ref[pl.ds((h * m + r) * kp, kp)]
            wl = lg + logn
            mx = jnp.max(wl)
            lz = mx + jnp.log(jnp.sum(jnp.exp(wl - mx)))
            acc = acc + jnp.where(ne, jnp.exp(lg - lz), 0.0)
        score = acc / m
        bits = lax.bitcast_convert_type(jnp.where(score > 0, score, 0.0), I32)
        psel.write_taken(bits, cnt, budget, ps.budget_lo(bits, cnt, budget), h, kp, ends_ref, w_ref, total_ref)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((h_static * kp,), I32), jax.ShapeDtypeStruct((h_static * kp,), I32),
                   jax.ShapeDtypeStruct((h_static,), I32)),
        grid=(h_static,), compiler_params=ps.compiler_params(num_warps, 1))


def xla_bits(q, cent, counts, scale):
    """The engine's decode scores (XLA: bf16 product, float32 softmax over the count-weighted logits, mean over the
    rows) as bits [H, K]."""
    lg = jnp.einsum("hmd,hkd->hmk", q, cent, preferred_element_type=F32) * scale
    ne = (counts > 0)[:, None, :]
    w = jnp.where(ne, lg + jnp.log(jnp.maximum(counts, 1).astype(F32))[:, None, :], NEG)
    mx = jnp.max(w, axis=-1, keepdims=True)
    lz = mx + jnp.log(jnp.sum(jnp.exp(w - mx), axis=-1, keepdims=True))
    s = jnp.mean(jnp.where(ne, jnp.exp(lg - lz), 0.0), axis=1)
    return lax.bitcast_convert_type(jnp.where(s > 0, s, 0.0), I32)


def fused_a(q, cent, counts, budget, kp, scale):
    """logits + select_a2: ends, w, total (flat, [H·Kp]) as kernel A gives them."""
    h, m, d = q.shape
    k = cent.shape[1]
    ncb = kp // BC
    lg = make_logits(m, d, kp, h * ncb, 8 if m > 1 else 4)(q.reshape(h * m, d), cent.reshape(h * k, d),
                                                          jnp.array([k, ncb], I32), jnp.array([scale], F32))
    cnt = jnp.pad(counts, ((0, 0), (0, kp - k))).reshape(-1)
    return make_select_a2(kp, m, h, 8 if kp >= 4096 else 4)(lg, cnt, jnp.array([budget, 0], I32))


def round13():
    say(f"\n## round 13 (a decode step's lookup: logits + select_a2 + kernel B): jax {jax.__version__}, {jax.devices()}")
    window = 100
    for label, h, m, t, kcl, kp, layers in (("LLaMA-2-7B 32K", 32, 1, 32768, 1638, 2048, 16), ("LLaMA-3-8B 32K", 8, 4, 32768, 1638, 2048, 16),
                                            ("LLaMA-2-7B 128K", 32, 1, 131072, 6554, 8192, 16), ("LLaMA-3-8B 128K", 8, 4, 131072, 6554, 8192, 16)):
        try:
            d = 128
            scale = 1.0 / d**0.5
            clustered, budget, b_max, _, cnts, stss, ords = psel.timing_layers(h, t, kcl, layers, window, 13)
            ks = jax.random.split(jax.random.PRNGKey(14), layers + 1)
            q0 = (jax.random.normal(ks[0], (h, m, d), F32) * 2).astype(BF16)
            cents = [jax.random.normal(ks[i + 1], (h, kcl, d), F32).astype(BF16) for i in range(layers)]
            # check: taken counts of the fused path against kernel A on XLA's bits
            ends_x, w_x, tot_x = psel.make_select_a(kp, h, 8 if kp >= 4096 else 4)(
                jnp.pad(xla_bits(q0, cents[0], cnts[0], scale), ((0, 0), (0, kp - kcl))).reshape(-1),
                jnp.pad(cnts[0], ((0, 0), (0, kp - kcl))).reshape(-1), jnp.array([budget, 0], I32))
            ends_f, w_f, tot_f = jax.jit(lambda q, c, n: fused_a(q, c, n, budget, kp, scale))(q0, cents[0], cnts[0])
            diff = int(jnp.sum(w_x != w_f))
            say(f"{label}: select_a2 vs kernel A on XLA's bits: {diff} of {h * kp} taken counts differ, totals "
                f"{'equal' if bool(jnp.all(tot_x == tot_f)) else 'DIFFER'}")

            def chain(fused):
                def f(q, cents, cnts, stss, ords):
                    acc = jnp.int32(0)
                    for c_, n_, s_, o_ in zip(cents, cnts, stss, ords):
                        qq = (q.astype(F32) + acc.astype(F32) * 1e-30).astype(BF16)
                        if fused:
                            ends, w, total = fused_a(qq, c_, n_, budget, kp, scale)
                        else:
                            bits = jnp.pad(xla_bits(qq, c_, n_, scale), ((0, 0), (0, kp - kcl))).reshape(-1)
                            ends, w, total = psel.make_select_a(kp, h, 8 if kp >= 4096 else 4)(
                                bits, jnp.pad(n_, ((0, 0), (0, kp - kcl))).reshape(-1), jnp.array([budget, 0], I32))
                        nt = -(-b_max // psel.R)
                        bp = nt * psel.R
                        b = psel.make_select_b(kp, False, h, bp, t, h * nt)
                        prm = jnp.array([t, clustered, window, b_max, bp, nt, 0, 0], I32)
                        g = b(ends, w, jnp.pad(s_, ((0, 0), (0, kp - kcl))).reshape(-1), total, o_.reshape(-1), prm)
                        acc = acc + g[0] + total[0]
                    return acc
                return jax.jit(f)

            args = (q0, cents, cnts, stss, ords)
            t_empty = ps.timeit(jax.jit(lambda q: q[0, 0, 0].astype(F32) + 1), (q0,))
            tx = (ps.timeit(chain(False), args) - t_empty) / layers * 1e6
            tf = (ps.timeit(chain(True), args) - t_empty) / layers * 1e6
            say(f"| {label} (H={h} M={m} K={kcl}) | XLA scores + A + B {tx:.1f} µs | logits + A2 + B {tf:.1f} µs ({tx / tf:.2f}×) |")
        except Exception:  # noqa: BLE001
            say(f"{label}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")


if __name__ == "__main__":
    round13()
