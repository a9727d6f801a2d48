"""Round 25 (session 16): a decode step's lookup and its kept list in one kernel (the lookup kernel with kernel B folded in).

Since session 15 a decode step's lookup is three kernels: the logits (XLA), the lookup kernel (select_s, one program a
KV head: the cluster scores, the budget's boundary, each cluster's taken keys w and their running sum ends) and kernel
B (make_select_b, one program a 256-slot tile of a head's list: each slot's cluster by a binary search over ends, then
its row). Session 15's CUPTI timelines gave kernel B 4.8 µs at the LLaMA-2-7B shape (32K) and 4.5 at LLaMA-3-8B, most of
it a launch and a dependent chain that a program of the lookup kernel can run itself: after writing ends and w (and a
barrier, which makes a program's global stores visible to all its threads), the same program walks its head's list in
tiles of SL slots, each slot's cluster found by the same binary search over the ends it just wrote (they stay in L1),
and writes kernel B's list.

make_select_sl(kp, sorted_layout): operands logits [H·M·K] f32 (unscaled), counts [H·K] f32, starts [H·K] i32, order
[H·S] i32 (unused in the sorted layout: pass one element), fprm [2] f32 (threshold, scale), prm [10] i32 (budget, K, M,
mode, S, clustered, window, B, Bp, unused); outputs ends, w [H·Kp] i32 (ends: scratch for the search), total [H] i32
and gidx [H·Bp] i32: kernel B's list (h·S + row; the window's rows after the taken ones; -1 past min(total + window,
B)). One program a KV head; the lookup kernel's warps (warps_s).

Checks it against the embedded pair (select_s, then pallas_select.make_select_b) on pallas_lookup's cases (1-8 rows,
K up to 13,107, empty and duplicated clusters, the threshold mode), both layouts: ends, w, total and the list equal.
With EXPORT=1 writes $OUT/kernels/select_sl_k{Kp}_{order,sorted}.cfg for Kp = 256 .. 16384 (SL = 1024).
Run on the GPU machine: python3 scripts/gpu/pallas_lookuplist.py (appends to $OUT/pallas.md).

Result (session 16, calls 9-10): every check equal, but slower. CUPTI per call, µs: LLaMA-2-7B 32K 21.9 against the
lookup kernel 10.0 plus kernel B 4.8; LLaMA-3-8B 32K 24.2 against 12.7 + 4.3; LLaMA-2-7B 128K 65.9 against 19.8 + 8.3.
One program a KV head walks its list's tiles one after the other (each a 12-step dependent search), where kernel B runs
a program a 256-slot tile. Not embedded; the engine's Go side for it was reverted.
"""
import functools
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402
import pallas_select as psel  # noqa: E402
import pallas_lookup as plk  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

plgpu = ps.plgpu
F32, I32 = jnp.float32, jnp.int32
NEG = ps.NEG
say = ps.say
SL = int(os.environ.get("SL", "1024"))


@functools.lru_cache(maxsize=None)
def make_select_sl(kp, sorted_layout, h_static=8, n_static=1 << 16, s_static=1 << 16, bp_static=4096, num_warps=4, sl=SL):
    steps = max(1, (kp - 1).bit_length()) + 1  # kernel B's search

    def kernel(logits_ref, counts_ref, starts_ref, order_ref, thr_ref, prm_ref, ends_ref, w_ref, total_ref, gidx_ref):
        h = pl.program_id(0)
        budget, k, m, mode = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3]
        s_rows, clustered, window, b_max, bp = prm_ref[4], prm_ref[5], prm_ref[6], prm_ref[7], prm_ref[8]
        # The lookup kernel (pallas_lookup.make_select_s) as it is, up to kernel A's taken keys.
        c = lax.broadcasted_iota(I32, (kp,), 0)
        valid = c < k
        n = ps.masked_load(counts_ref, (pl.ds(h * k, kp),), valid, 0.0)
        non_empty = n > 0
        log_n = jnp.log(jnp.maximum(n, 1.0))

        def row(r, acc):
            x = ps.masked_load(logits_ref, (pl.ds((h * m + r) * k, kp),), valid, 0.0) * thr_ref[1]
            wl = jnp.where(non_empty, x + log_n, NEG)
            mx = jnp.max(wl)
            log_z = mx + jnp.log(jnp.sum(jnp.exp(wl - mx)))
            return acc + jnp.where(non_empty, jnp.exp(x - log_z), 0.0)

        acc = lax.fori_loop(0, m, row, jnp.zeros((kp,), F32))
        score = acc / m.astype(F32)
        bits = lax.bitcast_convert_type(jnp.where(score > 0, score, 0.0), I32)
        cnt = n.astype(I32)
        cnt = jnp.where((mode != 0) & ~(score > thr_ref[0]), 0, cnt)
        lo = ps.budget_lo(bits, cnt, budget)
        # pallas_select.write_taken, with w and the total kept for the list.
        strict = jnp.where(bits > lo, cnt, 0)
        ties = jnp.where(bits == lo, cnt, 0)
        room = jnp.maximum(budget - jnp.sum(strict), 0)
        before = jnp.cumsum(ties) - ties
        w = strict + jnp.clip(room - before, 0, ties)
        ends_ref[pl.ds(h * kp, kp)] = jnp.cumsum(w)
        w_ref[pl.ds(h * kp, kp)] = w
        total = jnp.sum(w)
        total_ref[h] = total
        plgpu.debug_barrier()  # the ends and w stored above, visible to every thread of the program
        # Kernel B (pallas_select.make_select_b) over the head's list, SL slots at a time.
        base = h * kp
        kept = jnp.minimum(total + window, b_max)

        def tile(ti, carry):
            slot = ti * sl + lax.broadcasted_iota(I32, (sl,), 0)

            def body(_, lh):
                lo_, hi_ = lh
                active = lo_ < hi_
                mid = jnp.minimum((lo_ + hi_) // 2, kp - 1)
                right = ends_ref[base + mid] <= slot  # cluster mid ends at or before the slot
                return jnp.where(active & right, mid + 1, lo_), jnp.where(active & ~right, mid, hi_)

            cl, _ = lax.fori_loop(0, steps, body, (jnp.zeros((sl,), I32), jnp.full((sl,), kp, I32)))
            cl = jnp.minimum(cl, kp - 1)
            first = ends_ref[base + cl] - w_ref[base + cl]  # the cluster's first slot in the list
            pos = starts_ref[h * k + jnp.minimum(cl, k - 1)] + (slot - first)  # its position in cluster order
            if sorted_layout:
                r = pos
            else:
                r = order_ref[h * s_rows + jnp.clip(pos, 0, s_rows - 1)]
            r = jnp.where(slot < total, r, clustered + (slot - total))
            g = jnp.where(slot < kept, h * s_rows + r, -1)
            plgpu.store(gidx_ref.at[pl.ds(h * bp + ti * sl, sl)], g, mask=slot < bp)
            return carry

        lax.fori_loop(0, (bp + sl - 1) // sl, tile, 0)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((h_static * kp,), I32), jax.ShapeDtypeStruct((h_static * kp,), I32),
                   jax.ShapeDtypeStruct((h_static,), I32), jax.ShapeDtypeStruct((h_static * bp_static,), I32)),
        grid=(h_static,), compiler_params=ps.compiler_params(num_warps, 1))


def sl_call(logits, counts, starts, order, budget, kp, clustered, window, b_max, s_rows, thr=None, scale=1.0):
    h, m, k = logits.shape
    bp = -(-b_max // 256) * 256
    kern = make_select_sl(kp, order is None, h, max(h * m * k, 1), s_rows, bp, plk.warps_s(kp))
    ordf = order.reshape(-1) if order is not None else jnp.zeros((1,), I32)
    prm = jnp.array([budget, k, m, 0 if thr is None else 1, s_rows, clustered, window, b_max, bp, 0], I32)
    return kern(logits.reshape(-1), counts.astype(F32).reshape(-1), starts.reshape(-1), ordf,
                jnp.array([0.0 if thr is None else thr, scale], F32), prm)


def check():
    ok_all = True
    for case, (h, m, s_rows, k, kp, budget, window, b_max) in enumerate(plk.CASES):
        clustered, logits, counts, starts, order = plk.lookup_case(case, h, m, s_rows, k, window)
        scale = 0.0883883
        logits = logits / scale
        sc = plk.ref_scores(logits * scale, counts.astype(F32))
        for thr in (None, float(jnp.quantile(sc, 0.8))):
            try:
                ends, w, total, startsp = plk.select_s_call(logits, counts, starts, budget, kp, thr, scale)
                for sorted_layout in (False, True):
                    od = None if sorted_layout else order
                    g1 = plk.b_call(psel.make_select_b, ends, w, startsp, total, od, h, kp, clustered, window, b_max, s_rows)
                    e2, w2, t2, g2 = sl_call(logits, counts, starts, od, budget, kp, clustered, window, b_max, s_rows, thr, scale)
                    n = g1.shape[0] // h
                    g2 = g2.reshape(h, -1)[:, :n].reshape(-1)
                    ok = (bool(jnp.all(g1 == g2)) and bool(jnp.all(w == w2)) and bool(jnp.all(total == t2))
                          and bool(jnp.all(ends == e2)))
                    ok_all &= ok
                    say(f"check select_sl case {case} (H={h} M={m} K={k} Kp={kp} thr={thr is not None} sorted={sorted_layout}): "
                        f"{'OK' if ok else 'FAIL'} (slots differing {int(jnp.sum(g1 != g2))}, w {int(jnp.sum(w != w2))}, "
                        f"total {int(jnp.sum(total != t2))})")
            except Exception:  # noqa: BLE001
                ok_all = False
                say(f"check case {case}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    say(f"round 25 checks {'passed' if ok_all else 'FAILED'}")
    return ok_all


def export():
    outdir = os.path.join(ps.OUT, "kernels")
    os.makedirs(outdir, exist_ok=True)

    def lower(kp, sorted_layout, h=8, n=1 << 16, s=1 << 16, bp=4096):
        args = (jax.ShapeDtypeStruct((n,), F32), jax.ShapeDtypeStruct((n,), F32), jax.ShapeDtypeStruct((n,), I32),
                jax.ShapeDtypeStruct((s,), I32), jax.ShapeDtypeStruct((2,), F32), jax.ShapeDtypeStruct((10,), I32))
        return p2.extract_config(jax.jit(make_select_sl(kp, sorted_layout, h, n, s, bp, plk.warps_s(kp))).lower(*args).as_text())

    a = p2.ir_of(lower(2048, False))
    b = p2.ir_of(lower(2048, False, h=3, n=777, s=999, bp=512))
    say(f"select_sl: escaped IR equal for two shape sets: {a == b} ({len(a)} / {len(b)} chars)")
    for kp in plk.KPS:
        for sorted_layout in (False, True):
            with open(os.path.join(outdir, f"select_sl_k{kp}_{'sorted' if sorted_layout else 'order'}.cfg"), "w") as fh:
                fh.write(lower(kp, sorted_layout))
    say(f"wrote {len(os.listdir(outdir))} configs to {outdir}")


if __name__ == "__main__":
    say(f"\n## round 25 (the decode lookup and its list in one kernel, SL {SL}): jax {jax.__version__}, {jax.devices()}")
    if check() and os.environ.get("EXPORT"):
        export()
