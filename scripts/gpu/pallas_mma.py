"""Round 33 (prepared in session 20, not yet run): the decode step's paged kernel with the dynamic segment
(pallas_finish.make_paged_seg, embedded as squeeze/kernels/pagedseg_g{G}_d{D}.cfg.gz) on the tensor cores.

Why. The embedded body (pallas_squeeze2._online and make_paged_seg's dynamic body) computes each query row on its own:
for each of the G rows, a [R, D] product summed over D (the scores) and a [R, D] product summed over R (the values):
2·G reductions across the program's threads a tile. Session 15's CUPTI timelines (H200) put the kernel at 17.7 µs
for the 13.6 MB of kept rows of a LLaMA-3-8B 32K decode step (0.8 TB/s) and 53.6 µs for the 54.5 MB at 128K
(1.0 TB/s), where the one-row kernel of LLaMA-2-7B read its 218 MB at 128K at about 3 TB/s. Grouped-query decode
(G = 4) is the slowest per byte. Here both bodies put the G rows in a 16-row block (rows ≥ G repeat row G - 1) and
compute a tile with two tensor-core products: scores [16, R] = q·Kᵀ, then p·V; the softmax is per row in base 2.

The contract is make_paged_seg's (squeeze.AttendSelectedDyn's pagedseg configs), with the same bytes: q is read as
[H·G, D] (the engine passes [H, G, D]), the outputs written as o [P·G, D] and lse [P·G] (the engine reads [P, G, D]
and [P, G]); mask [G·T] i32, prm [iters, NS, NSD, tiles a dynamic program, T, H] i32, scale [1] f32. Rows ≥ G of a
program all hold row G - 1's values and write them to row G - 1's place: the same values to the same address.

1. Checks: make_paged_seg's check cases (pallas_finish.check_seg: G 1, 2, 3, 4, 8; D 64, 128; dynamic lengths not a
   multiple of R; per-row masks; an empty head; logits ×40) against the float32 reference, and the embedded kernel.
2. Times (pallas_finish.bench_setup and chain_time: chained layers, µs a layer, XLA's merge of the splits included)
   the embedded kernel and this one at the four decode shapes, for 4 and 8 warps.
3. EXPORT=1: if every check passes, writes $OUT/kernels/pagedseg_g{G}_d{D}.cfg for G = 1..8, D = 64, 128 (the warps
   of the faster total, or WARPS=), for the engine's SQLLM_KERNEL_DIR (scripts/gpu/next_mma.sh measures them there).
Run on the GPU machine: python3 scripts/gpu/pallas_mma.py (appends to $OUT/pallas.md).
"""
import functools
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402
import pallas_finish as pf  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

F32, I32, BF16 = jnp.float32, jnp.int32, jnp.bfloat16
NEG = ps.NEG
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
QM = 16  # the query block: the fewest rows of a tensor-core product
say = ps.say


def _dot_t(a, b):
    """[X, D]·[Y, D]ᵀ on the tensor cores, float32 accumulation."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _dot(a, b):
    """[X, Y]·[Y, D], float32 accumulation."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _init(d):
    return jnp.full((QM,), NEG, F32), jnp.zeros((QM,), F32), jnp.zeros((QM, d), F32)


def _online(q16, k, v, keep, scale2, carry):
    """One tile: q16 [16, D] bf16, k, v [R, D] bf16, keep [16, R]; carry (m [16] in log2 units, l [16], acc [16, D])."""
    m, l, acc = carry
    s = jnp.where(keep, _dot_t(q16, k) * scale2, NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.where(keep, jnp.exp2(s - m_new[:, None]), 0.0)
    return m_new, l * alpha + jnp.sum(p, axis=1), acc * alpha[:, None] + _dot(p.astype(BF16), v)


@functools.lru_cache(maxsize=None)
def make_paged_seg_mma(g, d, r, n, p, hq, nd, tm, num_warps=4, num_stages=1, debug=False):
    """make_paged_seg's contract on the tensor cores (module comment); the list's body prefetches as pf2."""

    def kernel(q_ref, idx_ref, k_ref, v_ref, dk_ref, dv_ref, mask_ref, prm_ref, scale_ref, o_ref, lse_ref):
        pid = pl.program_id(0)
        iters, ns, nsd, dit, t = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3], prm_ref[4]
        scale2 = scale_ref[0] * LOG2E
        pctx = prm_ref[5] * ns
        gsel = jnp.minimum(lax.broadcasted_iota(I32, (QM,), 0), g - 1)

        def finish(st):
            m, l, acc = st
            rows = pid * g + gsel
            o_ref[rows, :] = acc / jnp.maximum(l, 1e-30)[:, None]
            lse_ref[rows] = jnp.where(l > 0, (m + jnp.log2(jnp.maximum(l, 1e-30))) * LN2, -jnp.inf)

        @pl.when(pid < pctx)
        def _ctx():
            h = pid // ns
            q16 = q_ref[h * g + gsel, :]
            base = pid * iters * r

            def entries(i):
                return idx_ref[pl.ds(base + jnp.minimum(i, iters - 1) * r, r)]

            def rows(ix):
                ixc = jnp.maximum(ix, 0)
                return k_ref[ixc, :], v_ref[ixc, :]

            def body(i, carry):
                ix_n, (ix, k, v), st = carry
                cur = (ix_n,) + rows(ix_n)
                ix_nn = entries(i + 2)
                keep = jnp.broadcast_to((ix >= 0)[None, :], (QM, r))
                return ix_nn, cur, _online(q16, k, v, keep, scale2, st)

            ix0 = entries(0)
            _, _, st = lax.fori_loop(0, iters, body, (entries(1), (ix0,) + rows(ix0), _init(d)))
            finish(st)

        @pl.when(pid >= pctx)
        def _dyn():
            qd = pid - pctx
            h = qd // nsd
            j = qd - h * nsd
            q16 = q_ref[h * g + gsel, :]
            row0 = j * dit * r

            def body(i, st):
                off = row0 + i * r + lax.broadcasted_iota(I32, (r,), 0)
                inb = off < t
                midx = (gsel * t)[:, None] + jnp.minimum(off, t - 1)[None, :]
                keep = (mask_ref[midx] != 0) & inb[None, :]
                anyk = jnp.max(keep.astype(I32), axis=0) > 0
                k = ps.masked_load(dk_ref, (pl.ds(h * t + row0 + i * r, r), slice(None)), anyk[:, None], 0.0)
                v = ps.masked_load(dv_ref, (pl.ds(h * t + row0 + i * r, r), slice(None)), anyk[:, None], 0.0)
                return _online(q16, k.astype(BF16), v.astype(BF16), keep, scale2, st)

            finish(lax.fori_loop(0, dit, body, _init(d)))

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((p * g, d), F32), jax.ShapeDtypeStruct((p * g,), F32)),
        grid=(p,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def seg_raw_mma(q, gidx, k, v, dk, dv, mask, ns, iters, nsd, scale, r=32, nw=4, st=1):
    """pallas_finish.seg_raw with this kernel: o [H·(NS+NSD), G, D], lse [H·(NS+NSD), G]."""
    hq, g, d = q.shape
    t = k.shape[1]
    td = dk.shape[1]
    last = jnp.max(jnp.where(mask, jnp.arange(td, dtype=I32)[None, :] + 1, 0))
    tiles = (last + r - 1) // r
    dit = (tiles + nsd - 1) // nsd
    prm = jnp.stack([jnp.int32(iters), jnp.int32(ns), jnp.int32(nsd), dit, jnp.int32(td), jnp.int32(hq)]).astype(I32)
    p = hq * (ns + nsd)
    kern = make_paged_seg_mma(g, d, r, hq * t, p, hq, hq * td, g * td, nw, st)
    o, lse = kern(q.reshape(hq * g, d), gidx, k.reshape(hq * t, d), v.reshape(hq * t, d), dk.reshape(hq * td, d),
                  dv.reshape(hq * td, d), mask.astype(I32).reshape(-1), prm, jnp.array([scale], F32))
    return o.reshape(p, g, d), lse.reshape(p, g)


def seg_call_mma(q, gidx, k, v, dk, dv, mask, ns, iters, nsd, scale, nw=4):
    hq = q.shape[0]
    o, lse = seg_raw_mma(q, gidx, k, v, dk, dv, mask, ns, iters, nsd, scale, nw=nw)
    return pf.xla_merge2(o, lse, hq, ns, nsd)


CHECK_CASES = ((1, 128, 4096, 1000, 544, 32, 400, 8, 1.0), (3, 64, 2000, 77, 77, 8, 250, 4, 1.0),
               (8, 128, 3000, 300, 0, 40, 1300, 8, 1.0), (4, 128, 4096, 1024, 1000, 32, 3456, 8, 40.0),
               (2, 64, 2000, 600, 333, 16, 700, 1, 1.0), (4, 64, 2000, 100, 90, 8, 500, 2, 1.0))


def check(nw):
    """The worst error against the float32 reference over CHECK_CASES (pallas_finish.check_seg's, and G 4 at D 64)."""
    worst = 0.0
    for g, d, t, dyn_t, valid, ns, b, nsd, big in CHECK_CASES:
        q, k, v, dk, dv, mask, idx_hb, gidx, iters, scale = pf.check_data(g, d, t, dyn_t, valid, ns, b, big)
        out, ol = jax.jit(lambda *a: seg_call_mma(*a, ns, iters, nsd, scale, nw))(q, gidx, k, v, dk, dv, mask)
        e1, e2, agree = pf.errors(out, ol, *pf.reference(q, idx_hb, k, v, dk, dv, mask, scale))
        eo, el = jax.jit(lambda *a: pf.seg_call(*a, ns, iters, nsd, scale))(q, gidx, k, v, dk, dv, mask)
        e3 = float(jnp.max(jnp.abs(out - eo)))
        say(f"check mma w{nw}: G{g} D{d} dyn {dyn_t} (≤{valid} seen) NS {ns} NSD {nsd} ×{big}: out {e1:.2e}, lse {e2:.2e}, "
            f"-Inf agree {agree}; against the embedded kernel {e3:.2e}")
        worst = max(worst, e1, e2, 0.0 if agree else 1.0)
    return worst


def bench(warps):
    """µs a layer (chained, XLA's merge included) of the embedded kernel and of this one, NSD 8."""
    say("\n| shape | layers | embedded | " + " | ".join(f"tensor cores, {w} warps" for w in warps) + " |")
    say("|---|---:|---:|" + "---:|" * len(warps))
    totals = {w: 0.0 for w in warps}
    for label, hq, g, t, layers in pf.BENCH_CASES:
        try:
            c = pf.bench_setup(hq, g, t, layers)
            row = [pf.chain_time(c, lambda qq, k, v, dk, dv: pf.seg_call(qq, c.gidx, k, v, dk, dv, c.mask, c.ns, c.iters, 8, c.scale)[0])]
            for w in warps:
                tw = pf.chain_time(c, lambda qq, k, v, dk, dv, w=w: seg_call_mma(qq, c.gidx, k, v, dk, dv, c.mask, c.ns, c.iters, 8, c.scale, w)[0])
                totals[w] += tw
                row.append(tw)
            say(f"| {label} | {layers} | " + " | ".join(f"{x:.1f}" for x in row) + " |")
        except Exception:  # noqa: BLE001
            say(f"| {label} | FAILED |\n```\n{traceback.format_exc()[-1500:]}\n```")
    return totals


def lower(g, d, nw, hq=8, n=1 << 20, p=320, nd=1 << 16, tm=1 << 14):
    kern = make_paged_seg_mma(g, d, 32, n, p, hq, nd, tm, nw, 1)
    args = (jax.ShapeDtypeStruct((hq * g, d), BF16), jax.ShapeDtypeStruct((p * 256,), I32),
            jax.ShapeDtypeStruct((n, d), BF16), jax.ShapeDtypeStruct((n, d), BF16),
            jax.ShapeDtypeStruct((nd, d), BF16), jax.ShapeDtypeStruct((nd, d), BF16),
            jax.ShapeDtypeStruct((tm,), I32), jax.ShapeDtypeStruct((6,), I32), jax.ShapeDtypeStruct((1,), F32))
    return p2.extract_config(jax.jit(kern).lower(*args).as_text())


def main():
    say(f"\n## round 33 (the paged kernel with the dynamic segment on the tensor cores): jax {jax.__version__}, {jax.devices()}")
    warps = [int(x) for x in os.environ.get("WARPS", "4,8").split(",")]
    ok = []
    for w in warps:
        try:
            worst = check(w)
            say(f"round 33, {w} warps: worst {worst:.2e}: {'pass' if worst < 2e-2 else 'FAIL'}")
            if worst < 2e-2:
                ok.append(w)
        except Exception:  # noqa: BLE001
            say(f"round 33, {w} warps FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    if not ok:
        return
    totals = bench(ok) if not os.environ.get("EXPORT_ONLY") else {w: 0.0 for w in ok}
    if os.environ.get("EXPORT"):
        best = min(ok, key=lambda w: totals[w])
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for d in (64, 128):
            for g in range(1, 9):
                with open(os.path.join(outdir, f"pagedseg_g{g}_d{d}.cfg"), "w") as f:
                    f.write(lower(g, d, best))
        say(f"exported round 33 ({best} warps) to {outdir}: {sorted(os.listdir(outdir))}")


if __name__ == "__main__":
    main()
