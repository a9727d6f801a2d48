"""Round 22 (session 15): a decode step's lookup in fewer kernels.

Session 14's CUPTI timeline (LLaMA-2-7B shape, 32K, decode, attention benchmark) showed the lookup as seven kernels:
the centroid logits (XLA's dot, 5.2 µs), XLA's log-softmax and mean (two kernels, 3.7 + 1.4 µs), two pads of the
bits / counts and of the starts to Kp (1.5 + 1.6 µs), selection kernel A (6.9 µs) and kernel B (4.7 µs).

- select_s, grid (H,): kernel A with the cluster scores and the pads folded in (embedded: squeeze/kernels/select_s_k*).
  It reads the step's logits [H·M·K] float32 (XLA's dot, unscaled: fprm[1] is the attention scale, applied here so
  that XLA writes no scaled copy), the counts [H·K] float32 and the starts [H·K] int32 as they are (unpadded, masked
  loads), computes each cluster's score as squeeze.ClusterScores does (per query row the count-weighted log-sum-exp
  over the head's clusters, the mean over the rows of exp(logit - logZ), 0 for an empty cluster), its float bits
  (squeeze.ScoreBits), optionally drops the clusters at or below a calibrated threshold (prm[3] = 1, fprm[0];
  squeeze.aboveThreshold), then kernel A's bisection and taken keys. Outputs ends, w [H·Kp], total [H] (kernel A's) and
  the starts padded to Kp [H·Kp] int32 for kernel B. prm [4] int32: budget, K, M, mode. Warps: warps_s.
- select_b2, grid (H·NT,): kernel B with each slot's cluster found by a WAYS-ary search (a [R, WAYS] gather a pass:
  3 dependent loads for Kp = 2048 instead of 12). Same operands and output as kernel B. Measured in session 15 in the
  attention benchmark (calls 4), not embedded: no faster at 32K, slower at 128K (7B 137.0 / 124.0 µs with 16 / 8 ways
  against 112.3), the wider gathers reading far more than the binary search saves.
- select_b3: kernel B with the slot's coarse block from one [R, 128]-chunked comparison with every 16th cluster's end,
  then one [R, 16] gather. Checked; measured in session 15 (call 9, CUPTI), not embedded: 23.8 against 5.0 µs at 7B
  32K, 240 against 8.2 at 128K (the broadcast comparisons cost far more than the loads they replace).

Checks select_s against the jnp twin of the XLA lookup (scores → bits → pallas_squeeze2.select_reference) on random
logits with empty clusters, duplicated clusters (exact ties), M = 1..8 rows and the threshold mode, select_b2
against kernel B (round 7) on both layouts; times the old chain (XLA scores, pads, A, B) against A2 + B2 (16 layers
chained, jax's timing, no command buffers: it misleads for kernels this small; decide with the attention benchmark);
with EXPORT=1 writes $OUT/kernels/select_s_k{Kp}.cfg for Kp = 256 .. 16384 (see export()).
Run on the GPU machine: python3 scripts/gpu/pallas_lookup.py (appends to $OUT/pallas.md).
"""
import functools
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402
import pallas_select as psel  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402

F32, I32 = jnp.float32, jnp.int32
NEG = ps.NEG
say = ps.say
R = psel.R
WAYS = int(os.environ.get("SEL_WAYS", "16"))
KPS = (256, 512, 1024, 2048, 4096, 8192, 16384)


def warps_a(kp):
    """Kernel A's warps (pallas_select.select_call)."""
    return 8 if kp >= 4096 else 4


def warps_s(kp):
    """The lookup kernel's warps: 8 from Kp = 2048 (session 15, CUPTI: 9.98 against 10.52 µs at the 7B shape, 32K, and
    12.86 against 13.59 at 8B; 16 warps 10.61 / 13.38; at Kp = 8192 8 warps 20.3 / 26.2 against 38.0 / 46.4 with 4)."""
    return 8 if kp >= 2048 else 4


@functools.lru_cache(maxsize=None)
def make_select_s(kp, h_static=8, n_static=1 << 16, num_warps=4):
    """logits [H·M·K] f32 (unscaled), counts [H·K] f32, starts [H·K] i32, fprm [2] f32 (threshold, scale), prm [4]
    i32 (budget, K, M, mode). Outputs ends, w [H·Kp], total [H], startsp [H·Kp] int32."""

    def kernel(logits_ref, counts_ref, starts_ref, thr_ref, prm_ref, ends_ref, w_ref, total_ref, startsp_ref):
        h = pl.program_id(0)
        budget, k, m, mode = prm_ref[0], prm_ref[1], prm_ref[2], prm_ref[3]
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
        psel.write_taken(bits, cnt, budget, lo, h, kp, ends_ref, w_ref, total_ref)
        st = ps.masked_load(starts_ref, (pl.ds(h * k, kp),), valid, 0)
        startsp_ref[pl.ds(h * kp, kp)] = st

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((h_static * kp,), I32), jax.ShapeDtypeStruct((h_static * kp,), I32),
                   jax.ShapeDtypeStruct((h_static,), I32), jax.ShapeDtypeStruct((h_static * kp,), I32)),
        grid=(h_static,), compiler_params=ps.compiler_params(num_warps, 1))


def write_slots(c, slot, h, t, base, total, sorted_layout, ends_ref, w_ref, starts_ref, order_ref, gidx_ref,
                s_rows, clustered, window, b_max, bp):
    """Kernel B's tail (pallas_select.make_select_b's, which stays as the embedded kernel was lowered): each slot's row
    from its cluster c, then the window's rows, -1 past the kept slots, written to gidx."""
    first = ends_ref[base + c] - w_ref[base + c]
    pos = starts_ref[base + c] + (slot - first)
    if sorted_layout:
        row = pos
    else:
        row = order_ref[h * s_rows + jnp.clip(pos, 0, s_rows - 1)]
    kept = jnp.minimum(total + window, b_max)
    row = jnp.where(slot < total, row, clustered + (slot - total))
    gidx_ref[pl.ds(h * bp + t * R, R)] = jnp.where(slot < kept, h * s_rows + row, -1)


def make_b_variant(kp, sorted_layout, find, h_static, bp_static, s_static, p_static, num_warps):
    """Kernel B (pallas_select.make_select_b) with another search: find(ends_ref, base, slot) gives each slot's cluster
    (the number of clusters of the head ending at or before it, at most Kp - 1). Same operands and output."""

    def kernel(ends_ref, w_ref, starts_ref, total_ref, order_ref, prm_ref, gidx_ref):
        pid = pl.program_id(0)
        s_rows, clustered, window, b_max, bp, nt = (prm_ref[i] for i in range(6))
        h = pid // nt
        t = pid % nt
        base = h * kp
        slot = t * R + jnp.arange(R, dtype=I32)
        c = find(ends_ref, base, slot)
        write_slots(c, slot, h, t, base, total_ref[h], sorted_layout, ends_ref, w_ref, starts_ref, order_ref, gidx_ref,
                    s_rows, clustered, window, b_max, bp)

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((h_static * bp_static,), I32),
        grid=(p_static,), compiler_params=ps.compiler_params(num_warps, 1))


@functools.lru_cache(maxsize=None)
def make_select_b2(kp, sorted_layout, ways=WAYS, h_static=8, bp_static=4096, s_static=1 << 16, p_static=64, num_warps=4):
    """Kernel B with a ways-ary search: a [R, ways] gather a pass."""
    widths = []
    width = kp
    while width > 1:
        wy = min(ways, width)
        widths.append((width // wy, wy))
        width //= wy

    def find(ends_ref, base, slot):
        lo = jnp.zeros((R,), I32)
        # Invariant: clusters [0, lo) end at or before the slot, clusters from lo + width on after it.
        for step, wy in widths:
            cand = lo[:, None] + step * (lax.broadcasted_iota(I32, (R, wy), 1) + 1) - 1  # [R, wy]
            e = ends_ref[base + cand]
            lo = lo + step * jnp.sum((e <= slot[:, None]).astype(I32), axis=1)
        return jnp.minimum(lo, kp - 1)

    return make_b_variant(kp, sorted_layout, find, h_static, bp_static, s_static, p_static, num_warps)


def b3_group(kp):
    """Clusters a coarse block of select_b3: 16, more above Kp = 8192 (at most 512 blocks)."""
    return max(16, kp // 512)


@functools.lru_cache(maxsize=None)
def make_select_b3(kp, sorted_layout, h_static=8, bp_static=4096, s_static=1 << 16, p_static=64, num_warps=8):
    """Kernel B with each slot's cluster found in two loads instead of a binary search's 12 dependent ones: the ends of
    every g-th cluster (the coarse blocks' last ends, one strided load the program's 256 slots share) are compared with
    every slot at once ([R, 128] chunks), which gives the slot's block; then one [R, g] gather of that block's ends
    gives the cluster."""
    g = b3_group(kp)
    nc = kp // g
    chunk = min(nc, 128)

    def find(ends_ref, base, slot):
        cb = jnp.zeros((R,), I32)
        for i in range(nc // chunk):
            j = i * chunk + lax.broadcasted_iota(I32, (chunk,), 0)
            ce = ends_ref[base + j * g + (g - 1)]  # [chunk]: each block's last end
            cb = cb + jnp.sum((ce[None, :] <= slot[:, None]).astype(I32), axis=1)
        cb = jnp.minimum(cb, nc - 1)
        fe = ends_ref[base + cb[:, None] * g + lax.broadcasted_iota(I32, (R, g), 1)]  # [R, g]
        return jnp.minimum(cb * g + jnp.sum((fe <= slot[:, None]).astype(I32), axis=1), kp - 1)

    return make_b_variant(kp, sorted_layout, find, h_static, bp_static, s_static, p_static, num_warps)


def ref_scores(logits, counts):
    """squeeze.ClusterScores from scaled logits [H, M, K] and counts [H, K] float32 (the XLA formula)."""
    non_empty = (counts > 0)[:, None, :]
    wl = jnp.where(non_empty, logits + jnp.log(jnp.maximum(counts, 1.0))[:, None, :], NEG)
    mx = jnp.max(wl, axis=-1, keepdims=True)
    log_z = mx + jnp.log(jnp.sum(jnp.exp(wl - mx), axis=-1, keepdims=True))
    return jnp.mean(jnp.exp(jnp.where(non_empty, logits - log_z, NEG)), axis=1)


def bits_of(scores):
    return lax.bitcast_convert_type(jnp.where(scores > 0, scores, 0.0).astype(F32), I32)


def lookup_case(case, h, m, s_rows, k, window, dup=True, empty=True):
    """Random scaled logits [H, M, K], counts (some clusters empty) and starts, the cluster order; with dup, every
    4th cluster copies its neighbour's logits and count (exact ties)."""
    key = jax.random.PRNGKey(200 + case)
    k1, k2 = jax.random.split(key, 2)
    clustered = s_rows - window
    labels = jax.random.randint(k1, (h, clustered), 0, k)
    if empty:
        labels = jnp.where(labels % 5 == 1, labels - 1, labels)  # every 5th cluster empty
    counts = jax.vmap(lambda x: jnp.bincount(x, length=k))(labels).astype(I32)
    logits = jax.random.normal(k2, (h, m, k), F32) * 2.0
    if dup:
        src = jnp.arange(k) - (jnp.arange(k) % 4 == 3).astype(jnp.int32)
        logits = logits[:, :, src]
        counts = counts[:, src]
    starts = (jnp.cumsum(counts, axis=1) - counts).astype(I32)
    order = jax.vmap(lambda x: jnp.argsort(jnp.concatenate([x, jnp.full((window,), k)]), stable=True))(labels).astype(I32)
    return clustered, logits, counts, starts, order


def select_s_call(logits, counts, starts, budget, kp, thr=None, scale=1.0, nw=None):
    """The lookup kernel over unscaled logits [H, M, K] (scaled by scale inside)."""
    h, m, k = logits.shape
    a = make_select_s(kp, h, max(h * m * k, 1), nw or warps_s(kp))
    mode = 0 if thr is None else 1
    prm = jnp.array([budget, k, m, mode], I32)
    return a(logits.reshape(-1), counts.astype(F32).reshape(-1), starts.reshape(-1),
             jnp.array([0.0 if thr is None else thr, scale], F32), prm)


def b_call(make, ends, w, startsp, total, order, h, kp, clustered, window, b_max, s_rows):
    nt = -(-b_max // R)
    bp = nt * R
    b = make(kp, order is None, h_static=h, bp_static=bp, s_static=s_rows, p_static=h * nt)
    ordf = order.reshape(-1) if order is not None else jnp.zeros((1,), I32)
    prm = jnp.array([s_rows, clustered, window, b_max, bp, nt, 0, 0], I32)
    return b(ends, w, startsp, total, ordf, prm)


CASES = (  # h, m, s_rows, k, kp, budget, window, b_max
    (3, 1, 1000, 40, 256, 300, 16, 320), (2, 4, 1000, 40, 256, 5000, 16, 1024), (3, 8, 1000, 200, 256, 300, 16, 320),
    (32, 1, 32768, 1638, 2048, 3266, 100, 3392), (8, 4, 32768, 1638, 2048, 3266, 100, 3392),
    (4, 3, 131072, 6554, 8192, 13097, 100, 13248), (2, 1, 262144, 13107, 16384, 26200, 100, 26368))


def check():
    ok_all = True
    for case, (h, m, s_rows, k, kp, budget, window, b_max) in enumerate(CASES):
        clustered, logits, counts, starts, order = lookup_case(case, h, m, s_rows, k, window)
        scale = 0.0883883  # 1/sqrt(128)
        logits = logits / scale
        sc = ref_scores(logits * scale, counts.astype(F32))
        for thr in (None, float(jnp.quantile(sc, 0.8))):
            try:
                ends, w, total, startsp = select_s_call(logits, counts, starts, budget, kp, thr, scale)
                cnt = counts if thr is None else jnp.where(sc > thr, counts, 0)
                bits = bits_of(sc)
                idx, valid, rkept, rtaken = p2.select_reference(bits, cnt, starts, order, budget, clustered, window, b_max)
                w_k = w.reshape(h, kp)[:, :k]
                kept = jnp.minimum(total + window, b_max)
                sp = startsp.reshape(h, kp)
                ok = (bool(jnp.all(w_k == rtaken)) and bool(jnp.all(kept == rkept))
                      and bool(jnp.all(sp[:, :k] == starts)) and bool(jnp.all(sp[:, k:] == 0))
                      and bool(jnp.all(w.reshape(h, kp)[:, k:] == 0)))
                ok_all &= ok
                say(f"check select_s case {case} (H={h} M={m} K={k} Kp={kp} budget={budget} thr={thr}): {'OK' if ok else 'FAIL'} "
                    f"(taken differing {int(jnp.sum(w_k != rtaken))}, kept {int(jnp.sum(kept != rkept))})")
                for sorted_layout in (False, True):
                    od = None if sorted_layout else order
                    g1 = b_call(psel.make_select_b, ends, w, startsp, total, od, h, kp, clustered, window, b_max, s_rows)
                    for name, mk in (("select_b2 8 ways", functools.partial(make_select_b2, ways=8)),
                                     ("select_b2 16 ways", functools.partial(make_select_b2, ways=16)), ("select_b3", make_select_b3)):
                        if os.environ.get("B3_ONLY") and name != "select_b3":
                            continue
                        g2 = b_call(mk, ends, w, startsp, total, od, h, kp, clustered, window, b_max, s_rows)
                        okb = bool(jnp.all(g1 == g2))
                        ok_all &= okb
                        if not okb:
                            say(f"check {name} case {case} sorted={sorted_layout}: FAIL ({int(jnp.sum(g1 != g2))} slots)")
            except Exception:  # noqa: BLE001
                ok_all = False
                say(f"check case {case}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    say(f"round 22 checks {'passed' if ok_all else 'FAILED'} (select_b2 / select_b3 compared with kernel B on both layouts)")
    return ok_all


def bench():
    say("\n| shape | old: XLA scores + pads + A + B | A + B2 | A2 + B | A2 + B2 (16 ways) | A2 + B2 (8 ways) |")
    say("|---|---:|---:|---:|---:|---:|")
    for label, hkv, m, t_ctx, kcl, kp in (("LLaMA-2-7B 32K", 32, 1, 32768, 1638, 2048), ("LLaMA-3-8B 32K", 8, 4, 32768, 1638, 2048),
                                          ("LLaMA-2-7B 128K", 32, 1, 131072, 6554, 8192), ("LLaMA-3-8B 128K", 8, 4, 131072, 6554, 8192)):
        layers, window = 16, 100
        clustered = t_ctx - window
        budget = int(0.1 * clustered)
        b_max = -(-(budget + window) // 64) * 64
        per = [lookup_case(50 + i, hkv, m, t_ctx, kcl, window, dup=False, empty=False) for i in range(layers)]
        lgs = [x[1] for x in per]
        cnts = [x[2].astype(F32) for x in per]
        stss = [x[3] for x in per]
        ords = [x[4] for x in per]
        t_empty = ps.timeit(jax.jit(lambda x: x[0, 0, 0] + 1), (lgs[0],))
        pad = ((0, 0), (0, kp - kcl))

        def chain(variant):
            def f(l0, lg, cn, st, od):
                acc = jnp.int32(0)
                for l_, c_, s_, o_ in zip(lg, cn, st, od):
                    l_ = l_ + acc.astype(F32) * 0
                    if variant[0] == "old":
                        a = psel.make_select_a(kp, hkv, warps_a(kp))
                        bits = bits_of(ref_scores(l_, c_))
                        ends, w, total = a(jnp.pad(bits, pad).reshape(-1), jnp.pad(c_.astype(I32), pad).reshape(-1),
                                           jnp.array([budget, 0], I32))
                        sp = jnp.pad(s_, pad).reshape(-1)
                    else:
                        ends, w, total, sp = select_s_call(l_, c_, s_, budget, kp)
                    mk = psel.make_select_b if variant[1] == 0 else functools.partial(make_select_b2, ways=variant[1])
                    g = b_call(mk, ends, w, sp, total, o_, hkv, kp, clustered, window, b_max, t_ctx)
                    acc = acc + g[0] + total[0]
                return acc
            return jax.jit(f)

        row = []
        for variant in (("old", 0), ("old", 16), ("new", 0), ("new", 16), ("new", 8)):
            try:
                tt = ps.timeit(chain(variant), (lgs[0], lgs, cnts, stss, ords))
                row.append(f"{(tt - t_empty) / layers * 1e6:.1f}")
            except Exception:  # noqa: BLE001
                row.append("failed")
                say(f"{label} {variant}: FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
        say(f"| {label} | " + " | ".join(row) + " |")


def export():
    """$OUT/kernels/select_s_k{Kp}.cfg (warps_s), and with EXPORT_WARPS="8 16" select_s_k{Kp}_w{W}.cfg for measuring
    (EXPORT_B2=1: kernel B2's configs too, select_b2_{ways}_k{Kp}_{layout}.cfg, measured in session 15, not embedded)."""
    outdir = os.path.join(ps.OUT, "kernels")
    os.makedirs(outdir, exist_ok=True)

    def lower_s(kp, h=8, n=1 << 16, nw=None):
        args = (jax.ShapeDtypeStruct((n,), F32), jax.ShapeDtypeStruct((n,), F32), jax.ShapeDtypeStruct((n,), I32),
                jax.ShapeDtypeStruct((2,), F32), jax.ShapeDtypeStruct((4,), I32))
        return p2.extract_config(jax.jit(make_select_s(kp, h, n, nw or warps_s(kp))).lower(*args).as_text())

    def lower_b2(kp, sorted_layout, h=8, bp=4096, s=1 << 16, p=64, ways=WAYS):
        args = (jax.ShapeDtypeStruct((h * kp,), I32), jax.ShapeDtypeStruct((h * kp,), I32), jax.ShapeDtypeStruct((h * kp,), I32),
                jax.ShapeDtypeStruct((h,), I32), jax.ShapeDtypeStruct((s,), I32), jax.ShapeDtypeStruct((8,), I32))
        return p2.extract_config(jax.jit(make_select_b2(kp, sorted_layout, ways, h, bp, s, p)).lower(*args).as_text())

    def lower_b3(kp, sorted_layout, h=8, bp=4096, s=1 << 16, p=64):
        args = (jax.ShapeDtypeStruct((h * kp,), I32), jax.ShapeDtypeStruct((h * kp,), I32), jax.ShapeDtypeStruct((h * kp,), I32),
                jax.ShapeDtypeStruct((h,), I32), jax.ShapeDtypeStruct((s,), I32), jax.ShapeDtypeStruct((8,), I32))
        return p2.extract_config(jax.jit(make_select_b3(kp, sorted_layout, h, bp, s, p)).lower(*args).as_text())

    def write(name, cfg):
        with open(os.path.join(outdir, name), "w") as fh:
            fh.write(cfg)

    for kp in KPS:
        write(f"select_s_k{kp}.cfg", lower_s(kp))
        for nw in os.environ.get("EXPORT_WARPS", "").split():
            write(f"select_s_k{kp}_w{nw}.cfg", lower_s(kp, nw=int(nw)))
        if os.environ.get("EXPORT_B3"):
            for sorted_layout in (False, True):
                write(f"select_b3_k{kp}_{'sorted' if sorted_layout else 'order'}.cfg", lower_b3(kp, sorted_layout))
        if os.environ.get("EXPORT_B2"):
            for sorted_layout in (False, True):
                for ways in (8, 16):
                    write(f"select_b2_{ways}_k{kp}_{'sorted' if sorted_layout else 'order'}.cfg", lower_b2(kp, sorted_layout, ways=ways))
    say(f"wrote {len(os.listdir(outdir))} configs to {outdir}")


if __name__ == "__main__":
    say(f"\n## round 22 (the decode lookup in fewer kernels): jax {jax.__version__}, {jax.devices()}")
    ok = check()
    if not os.environ.get("EXPORT_ONLY"):
        bench()
    if os.environ.get("EXPORT") and ok:
        export()
