"""Round 24 (session 16): the paged kernel with the dynamic segment and the merge of a head's splits in one launch.

Since session 14 a squeezed decode step's attention over its kept keys and its dynamic segment is two launches: the
paged kernel with the dynamic segment (make_paged_seg in pallas_finish.py: H·(NS + NSD) programs, each writing its
partial) and the merge kernel (make_merge2: one program a (head, query row) merging the head's NS + NSD partials).
Session 15's CUPTI timelines gave the merge 4.0 µs a layer at the LLaMA-2-7B shape and 3.2 at LLaMA-3-8B (32K), most
of it the launch and one round trip to memory for half a megabyte.

make_paged_segm folds the merge into the first launch, the way split-K kernels finish: every program writes its
partial as before, then (after a barrier) adds 1 to its head's counter, an atomic add with acquire-release semantics
at GPU scope; the program that gets NS + NSD − 1 back is the head's last and merges the head's partials itself (loads
that bypass L1), writes out [H, G, D] and lse [H, G], and puts the counter back to 0 (an atomic exchange) for the
next launch. No program waits for another, so the order in which programs run does not matter.

Operands: make_paged_seg's nine, then cnt [H + 1] int32, all 0 on entry (entry H is not touched: the engine puts a
tag there so that XLA never merges the constant with another); outputs make_paged_seg's o [P, G, D], lse [P, G]
(the partials, scratch for the caller) and out [H, G, D], olse [H, G] (-Inf where nothing was seen).

Checks against the float32 reference of pallas_finish.py (list and dynamic rows, masks that differ by row, an empty
head, logits ×40) 1, 3, 4 and 8 rows a KV head, head dims 64 and 128, each case run five times with the same
counter buffer (which must be all 0 again after every run) and against make_paged_seg + make_merge2 (the embedded
pair) on the same inputs; with EXPORT=1 writes $OUT/kernels/pagedsegm_g{G}_d{D}.cfg for G = 1..8, D = 64, 128 (the
embedded pagedseg kernels' bodies, warps and stages).
Run on the GPU machine: python3 scripts/gpu/pallas_segmerge.py (appends to $OUT/pallas.md); MODES=vol,plain,vec,never
checks and exports each mode's kernels for G = 1, 4 to $OUT/sets (main_modes).

Result (session 16, calls 5-8): correct (within 2.4e-7 of the embedded pair, counters back to 0 after every launch),
but slower. CUPTI per call, µs: at LLaMA-2-7B 32K the fused kernel 29.5-29.8 against the paged kernel 21.6-22.0 plus the
merge kernel 3.7-4.0; at LLaMA-3-8B 32K 38.3 (vol, plain) and 32.8 (vec) against 17.7-18.0 plus 3.1. With the merge
never run ("never") 26.2 and 18.1. The head's last program merges alone, after every other program of the head, at the
end of the launch; the merge kernel spreads the same work over a program a (head, row). Not embedded; the engine's Go
side for it was reverted.
"""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402
import pallas_finish as pf  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

plgpu = ps.plgpu
F32, I32 = jnp.float32, jnp.int32
NEG = ps.NEG
say = ps.say
SPLIT_BLOCK = pf.SPLIT_BLOCK
LOAD_MODE = []  # how the merge's loads bypass L1 (recorded once)


def fresh_load(ref, idx, mask, other):
    """A masked volatile load (ld.volatile: not served from L1; other programs wrote these partials during this
    launch). jax 0.11.2's cache_modifier ".cg" fails in its own lowering (KeyError: '.cg'), so volatile it is."""
    if not LOAD_MODE:
        LOAD_MODE.append("volatile")
    return plgpu.load(ref.at[idx], mask=mask, other=other, volatile=True)


@functools.lru_cache(maxsize=None)
def make_paged_segm(variant, g, d, r, n, p, hq, nd, tm, num_warps=4, num_stages=2, debug=False, mode="vol"):
    """mode (session 16, call 6 found "vol" slower than the two launches): "vol" the merge's loads volatile; "plain"
    ordinary loads (this launch's partials are not in the merging SM's L1: only the merge reads them, once, and
    stores write through); "vec" ordinary loads, every row of the head and both ranges of splits in one block of 64
    (the rows' loads independent); "never" the merge never runs (its code and the atomics stay: for measuring what they cost;
    the merged outputs are not written)."""
    load = fresh_load if mode == "vol" else ps.masked_load

    def kernel(q_ref, idx_ref, k_ref, v_ref, dk_ref, dv_ref, mask_ref, prm_ref, scale_ref, cnt_ref, o_ref, lse_ref,
               out_ref, olse_ref):
        pid = pl.program_id(0)
        iters, ns, nsd, dit, t = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3], prm_ref[4]
        nh = prm_ref[5]
        scale = scale_ref[0]
        pctx = nh * ns

        # Programs [0, H·NS): make_paged_seg's list body; the others: its dynamic body (same code).
        @pl.when(pid < pctx)
        def _ctx():
            h = pid // ns
            q_rows = [q_ref[h, gi, :].astype(F32) for gi in range(g)]
            base = pid * iters * r
            if variant == "base":
                def body(i, carry):
                    ix = idx_ref[pl.ds(base + i * r, r)]
                    keep = ix >= 0
                    ixc = jnp.maximum(ix, 0)
                    return p2._online(q_rows, k_ref[ixc, :].astype(F32), v_ref[ixc, :].astype(F32), keep, scale, carry)
                st = lax.fori_loop(0, iters, body, p2._init(g, d))
            else:
                def entries(i):
                    return idx_ref[pl.ds(base + jnp.minimum(i, iters - 1) * r, r)]

                def rows(ix):
                    ixc = jnp.maximum(ix, 0)
                    return k_ref[ixc, :], v_ref[ixc, :]

                def body(i, carry):
                    ix_n, (ix, k, v), st = carry
                    cur = (ix_n,) + rows(ix_n)
                    ix_nn = entries(i + 2)
                    st = p2._online(q_rows, k.astype(F32), v.astype(F32), ix >= 0, scale, st)
                    return ix_nn, cur, st
                ix0 = entries(0)
                _, _, st = lax.fori_loop(0, iters, body, (entries(1), (ix0,) + rows(ix0), p2._init(g, d)))
            p2._finish_program(o_ref, lse_ref, pid, st, g)

        @pl.when(pid >= pctx)
        def _dyn():
            qd = pid - pctx
            h = qd // nsd
            j = qd - h * nsd
            q_rows = [q_ref[h, gi, :].astype(F32) for gi in range(g)]
            row0 = j * dit * r

            def body(i, carry):
                ms, ls, accs = carry
                off = row0 + i * r + lax.broadcasted_iota(I32, (r,), 0)
                inb = off < t
                keeps = [ps.masked_load(mask_ref, (pl.ds(gi * t + row0 + i * r, r),), inb, 0) != 0 for gi in range(g)]
                anyk = keeps[0]
                for kk in keeps[1:]:
                    anyk = anyk | kk
                k = ps.masked_load(dk_ref, (pl.ds(h * t + row0 + i * r, r), slice(None)), anyk[:, None], 0.0).astype(F32)
                v = ps.masked_load(dv_ref, (pl.ds(h * t + row0 + i * r, r), slice(None)), anyk[:, None], 0.0).astype(F32)
                out_m, out_l, out_a = [], [], []
                for gi in range(g):
                    sc = jnp.where(keeps[gi], jnp.sum(k * q_rows[gi][None, :], axis=1) * scale, NEG)
                    m_new = jnp.maximum(ms[gi], jnp.max(sc))
                    alpha = jnp.exp(ms[gi] - m_new)
                    pr = jnp.where(keeps[gi], jnp.exp(sc - m_new), 0.0)
                    out_l.append(ls[gi] * alpha + jnp.sum(pr))
                    out_a.append(accs[gi] * alpha + jnp.sum(pr[:, None] * v, axis=0))
                    out_m.append(m_new)
                return tuple(out_m), tuple(out_l), tuple(out_a)

            st = lax.fori_loop(0, dit, body, p2._init(g, d))
            p2._finish_program(o_ref, lse_ref, pid, st, g)

        # The head's last program merges its NS + NSD partials.
        hh = jnp.where(pid < pctx, pid // ns, (pid - pctx) // jnp.maximum(nsd, 1))
        plgpu.debug_barrier()  # every thread's partial stored before the release below
        old = plgpu.atomic_add(cnt_ref, (hh,), jnp.int32(1))

        @pl.when(old == (ns + nsd - 1 if mode != "never" else -7))
        def _merge():
            def merge_range(base, count, gi, st):
                def merge(jj, carry):
                    m, l, acc = carry
                    sidx = jj * SPLIT_BLOCK + lax.broadcasted_iota(I32, (SPLIT_BLOCK,), 0)
                    ok = sidx < count
                    b0 = base + jj * SPLIT_BLOCK
                    sl = load(lse_ref, (pl.ds(b0, SPLIT_BLOCK), gi), ok, -jnp.inf)
                    so = load(o_ref, (pl.ds(b0, SPLIT_BLOCK), gi, slice(None)), ok[:, None], 0.0)
                    seen = ok & (sl > NEG)
                    m_new = jnp.maximum(m, jnp.max(jnp.where(seen, sl, NEG)))
                    alpha = jnp.exp(m - m_new)
                    w = jnp.where(seen, jnp.exp(jnp.where(seen, sl, m_new) - m_new), 0.0)
                    return m_new, l * alpha + jnp.sum(w), acc * alpha + jnp.sum(w[:, None] * so, axis=0)
                return lax.fori_loop(0, (count + SPLIT_BLOCK - 1) // SPLIT_BLOCK, merge, st)

            if mode == "vec":  # every row of the head at once, the list's and the dynamic splits in one block of 64
                total = ns + nsd

                def blk(jj, carry):
                    j = jj * 64 + lax.broadcasted_iota(I32, (64,), 0)
                    ok = j < total
                    rows = jnp.where(ok, jnp.where(j < ns, hh * ns + j, pctx + hh * nsd + (j - ns)), 0)
                    new = []
                    for gi in range(g):
                        m, l, acc = carry[gi]
                        sl = lse_ref[rows, gi]
                        so = o_ref[rows, gi, :]
                        seen = ok & (sl > NEG)
                        m_new = jnp.maximum(m, jnp.max(jnp.where(seen, sl, NEG)))
                        alpha = jnp.exp(m - m_new)
                        w = jnp.where(seen, jnp.exp(jnp.where(seen, sl, m_new) - m_new), 0.0)
                        new.append((m_new, l * alpha + jnp.sum(w), acc * alpha + jnp.sum(w[:, None] * so, axis=0)))
                    return tuple(new)
                init = tuple((jnp.float32(NEG), jnp.float32(0), jnp.zeros((d,), F32)) for _ in range(g))
                res = lax.fori_loop(0, (total + 63) // 64, blk, init)
            else:
                res = []
                for gi in range(g):
                    st = (jnp.float32(NEG), jnp.float32(0), jnp.zeros((d,), F32))
                    st = merge_range(hh * ns, ns, gi, st)
                    res.append(merge_range(pctx + hh * nsd, nsd, gi, st))
            for gi in range(g):
                m, l, acc = res[gi]
                out_ref[hh, gi, :] = acc / jnp.maximum(l, 1e-30)
                olse_ref[hh, gi] = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), -jnp.inf)
            plgpu.atomic_xchg(cnt_ref, (hh,), jnp.int32(0))

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((p, g, d), F32), jax.ShapeDtypeStruct((p, g), F32),
                   jax.ShapeDtypeStruct((hq, g, d), F32), jax.ShapeDtypeStruct((hq, g), F32)),
        grid=(p,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def segm_call(q, gidx, k, v, dk, dv, mask, cnt, ns, iters, nsd, scale, r=32, mode="vol"):
    hq, g, d = q.shape
    t = k.shape[1]
    td = dk.shape[1]
    last = jnp.max(jnp.where(mask, jnp.arange(td, dtype=I32)[None, :] + 1, 0))
    dit = ((last + r - 1) // r + nsd - 1) // nsd
    prm = jnp.stack([jnp.int32(iters), jnp.int32(ns), jnp.int32(nsd), dit, jnp.int32(td), jnp.int32(hq)]).astype(I32)
    variant, st = pf.seg_variant(g)
    kern = make_paged_segm(variant, g, d, r, hq * t, hq * (ns + nsd), hq, hq * td, g * td, 4, st, False, mode)
    return kern(q, gidx, k.reshape(hq * t, d), v.reshape(hq * t, d), dk.reshape(hq * td, d), dv.reshape(hq * td, d),
                mask.astype(I32).reshape(-1), prm, jnp.array([scale], F32), cnt)


def check(mode="vol", reps=5):
    worst = 0.0
    for g, d, t, dyn_t, valid, ns, b, nsd, big, hq in (
            (1, 128, 4096, 1000, 544, 28, 3456, 8, 1.0, 5), (3, 64, 2000, 77, 77, 8, 250, 1, 1.0, 3),
            (8, 128, 3000, 300, 0, 40, 1300, 8, 1.0, 3), (4, 128, 4096, 1024, 1000, 32, 3456, 8, 40.0, 3),
            (4, 64, 32768, 544, 544, 28, 3456, 5, 1.0, 8), (1, 128, 32768, 544, 544, 28, 3456, 5, 1.0, 32)):
        q, k, v, dk, dv, mask, idx_hb, gidx, iters, scale = pf.check_data(g, d, t, dyn_t, valid, ns, b, big, hq)
        ro, rl = pf.reference(q, idx_hb, k, v, dk, dv, mask, scale)
        o0, l0 = pf.seg_raw(q, gidx, k, v, dk, dv, mask, ns, iters, nsd, scale)
        eo, el = pf.merge2_call(o0, l0, hq, ns, nsd)
        cnt = jnp.array(list(np.zeros(hq, np.int32)) + [12345], I32)
        fn = jax.jit(lambda *a: segm_call(*a, ns, iters, nsd, scale, mode=mode))
        for rep in range(reps):
            _, _, out, ol = fn(q, gidx, k, v, dk, dv, mask, cnt)
            e1, e2, agree = pf.errors(out, ol, ro, rl)
            e3 = float(jnp.max(jnp.abs(out - eo)))
            e4 = float(jnp.max(jnp.where(jnp.isfinite(el), jnp.abs(ol - el), 0.0)))
            c = np.asarray(cnt)
            reset = bool((c[:hq] == 0).all() and c[hq] == 12345)
            if rep in (0, reps - 1) or not reset or max(e1, e2) > 1e-2:
                say(f"check {mode} G{g} D{d} H{hq} NS {ns} NSD {nsd} run {rep}: out {e1:.2e} lse {e2:.2e} agree {agree}; vs embedded "
                    f"pair {e3:.2e} / {e4:.2e}; counters back to 0 {reset} ({c.tolist()[:6]})")
            worst = max(worst, e1, e2, 0.0 if agree and reset else 1.0)
    say(f"merge loads: {LOAD_MODE}")
    return worst


def lower(g, d, hq=8, n=1 << 20, p=320, nd=1 << 16, tm=1 << 14, mode="vol"):
    variant, st = pf.seg_variant(g)
    kern = make_paged_segm(variant, g, d, 32, n, p, hq, nd, tm, 4, st, False, mode)
    args = (jax.ShapeDtypeStruct((hq, g, d), jnp.bfloat16), jax.ShapeDtypeStruct((p * 256,), I32),
            jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((nd, d), jnp.bfloat16), jax.ShapeDtypeStruct((nd, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((tm,), I32), jax.ShapeDtypeStruct((6,), I32), jax.ShapeDtypeStruct((1,), F32),
            jax.ShapeDtypeStruct((hq + 1,), I32))
    return p2.extract_config(jax.jit(kern).lower(*args).as_text())


def main_modes():
    """Session 16, call 8: each mode of MODES checked (but "never") and its configs for G = 1 and 4 written to
    $OUT/sets/{mode}/kernels/pagedsegm_g{G}_d{D}.cfg.gz, for the attention benchmark of a build that reads
    SQLLM_TEST_KERNEL_DIR."""
    import gzip
    say(f"\n## round 24, modes {os.environ['MODES']}: jax {jax.__version__}")
    for mode in os.environ["MODES"].split(","):
        if mode != "never":
            w = check(mode, 2)
            say(f"{mode}: worst {w:.2e}")
            if w > 1e-2:
                continue
        outdir = os.path.join(ps.OUT, "sets", mode, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for g in (1, 4):
            for d in (64, 128):
                with open(os.path.join(outdir, f"pagedsegm_g{g}_d{d}.cfg.gz"), "wb") as f:
                    f.write(gzip.compress(lower(g, d, mode=mode).encode(), 9, mtime=0))
        say(f"{mode}: exported")


def main():
    if os.environ.get("MODES"):
        return main_modes()
    say(f"\n## round 24 (paged kernel, dynamic segment and merge in one launch): jax {jax.__version__}, {jax.devices()}")
    w = check()
    say(f"segm worst {w:.2e}")
    if os.environ.get("EXPORT") and w < 1e-2:
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        a = p2.ir_of(lower(4, 128))
        b = p2.ir_of(lower(4, 128, hq=3, n=12345, p=17, nd=999, tm=77))
        say(f"segm: escaped IR equal for two shape sets: {a == b} ({len(a)} / {len(b)} chars)")
        for d in (64, 128):
            for g in range(1, 9):
                with open(os.path.join(outdir, f"pagedsegm_g{g}_d{d}.cfg"), "w") as f:
                    f.write(lower(g, d))
        say(f"wrote pagedsegm configs to {outdir}")


if __name__ == "__main__":
    main()
