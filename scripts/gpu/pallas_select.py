"""Round 7 (written in session 9, NOT RUN YET): the selection as two small kernels instead of XLA's ~10 (boundary
search, cumulative sums, a binary search per slot). Session 9 measured XLA's boundary at 34 µs a layer (7B shape,
32K, all-pairs) / 62 µs (128K, sort) and its index list at 23 / 50 µs, with command buffers (BENCHMARKS.md).

- select_a, grid (H,): one program per KV head. The budget's boundary lo over the head's cluster-score bits
  (bisection: 31 passes over [Kp]), then each cluster's taken keys w (all of a cluster above lo; of the clusters
  tied at lo, keys in cluster order until the budget) and their inclusive running sum: ends [H·Kp], w [H·Kp],
  total [H]. The list is in cluster order (the XLA path lists strict clusters first, then tied ones: the same keys).
- select_b, grid (H·NT,): one program per R slots of a head's list. Each slot's cluster by a binary search over
  the head's ends (gathers), then its row (the cluster's run start + offset, through order unless the keys are
  stored sorted), the window rows after the clusters' keys, -1 after that: gidx [H·Bp] in the paged kernel's
  format (h·S + row), which squeeze.SparseAttentionPaged consumes as is.

Checks both against squeeze.selectKeys' jnp twin (pallas_squeeze2.select_reference) on the cases of round 5 (ties,
budgets above the total, both layouts), times them, and exports configs (EXPORT=1) for Kp = 256 .. 16384.
Run on the GPU machine: python3 scripts/gpu/pallas_select.py (appends to $OUT/pallas.md).
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

F32, I32 = jnp.float32, jnp.int32
say = ps.say
R = int(os.environ.get("SEL_R", "256"))  # slots per select_b program


def budget_lo_ways(bits, counts, budget, t):
    """ps.budget_lo in passes of t candidate thresholds at once (t + 1 intervals; squeeze.budgetBits' search, as
    the Go code does it on XLA): the largest lo with Σ counts[bits ≥ lo] ≥ budget (0 if the total is below it).
    Each pass compares the head's Kp bits with the t candidates in one [t, Kp] reduction, so t = 4 takes 14
    passes instead of bisection's 31."""
    ways = t + 1
    nth = jnp.arange(1, t + 1, dtype=I32)
    passes, r = 0, ps.MAXBITS
    while r > 1:
        r, passes = -(-r // ways), passes + 1

    def body(_, carry):
        lo, hi = carry
        step = jnp.maximum((hi - lo + ways - 1) // ways, 1)
        cand = lo + step * nth  # [t]
        n = jnp.sum(jnp.where(bits[None, :] >= cand[:, None], counts[None, :], 0), axis=1)  # [t]
        ok = (n >= budget) & (cand < hi)  # a prefix of the candidates
        j = jnp.sum(ok.astype(I32))
        return lo + step * j, jnp.minimum(hi, lo + step * (j + 1))

    lo, _ = lax.fori_loop(0, passes, body, (jnp.int32(0), jnp.int32(ps.MAXBITS)))
    return lo


def write_taken(bits, cnt, budget, lo, h, kp, ends_ref, w_ref, total_ref):
    """Kernel A's outputs for head h from its boundary lo: each cluster's taken keys w (all of a cluster above lo; of
    the clusters tied at lo, keys in cluster order until the budget), their running sum ends and the total."""
    strict = jnp.where(bits > lo, cnt, 0)
    ties = jnp.where(bits == lo, cnt, 0)
    room = jnp.maximum(budget - jnp.sum(strict), 0)
    before = jnp.cumsum(ties) - ties
    w = strict + jnp.clip(room - before, 0, ties)
    ends_ref[pl.ds(h * kp, kp)] = jnp.cumsum(w)
    w_ref[pl.ds(h * kp, kp)] = w
    total_ref[h] = jnp.sum(w)


@functools.lru_cache(maxsize=None)
def make_select_a(kp, h_static=8, num_warps=4, ways_t=0):
    """bits, counts [H·Kp] int32 (padding clusters: bits 0, counts 0); prm [2] int32: budget, unused.
    Outputs ends [H·Kp], w [H·Kp], total [H] int32. ways_t = 0: the boundary by bisection (round 7); t > 0:
    budget_lo_ways with t candidates a pass (round 8)."""

    def kernel(bits_ref, counts_ref, prm_ref, ends_ref, w_ref, total_ref):
        h = pl.program_id(0)
        budget = prm_ref[0]
        bits = bits_ref[pl.ds(h * kp, kp)]
        cnt = counts_ref[pl.ds(h * kp, kp)]
        if ways_t:
            lo = budget_lo_ways(bits, cnt, budget, ways_t)
        else:
            lo = ps.budget_lo(bits, cnt, budget)  # 31 bisection passes; 0 when the total is below the budget
        write_taken(bits, cnt, budget, lo, h, kp, ends_ref, w_ref, total_ref)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((h_static * kp,), I32), jax.ShapeDtypeStruct((h_static * kp,), I32),
                   jax.ShapeDtypeStruct((h_static,), I32)),
        grid=(h_static,), compiler_params=ps.compiler_params(num_warps, 1))


@functools.lru_cache(maxsize=None)
def make_select_b(kp, sorted_layout, h_static=8, bp_static=4096, s_static=1 << 16, p_static=64, num_warps=4):
    """ends, w, starts [H·Kp] int32, total [H] int32, order [H·S] int32 (local rows; unused when sorted_layout);
    prm [8] int32: S, clustered, window, B (valid slots at most), Bp (slots per head in gidx), NT (programs per
    head), unused ×2. Output gidx [H·Bp] int32."""
    steps = max(1, (kp - 1).bit_length()) + 1

    def kernel(ends_ref, w_ref, starts_ref, total_ref, order_ref, prm_ref, gidx_ref):
        pid = pl.program_id(0)
        s_rows, clustered, window, b_max, bp, nt = (prm_ref[i] for i in range(6))
        h = pid // nt
        t = pid % nt
        base = h * kp
        slot = t * R + jnp.arange(R, dtype=I32)
        total = total_ref[h]
        lo = jnp.zeros((R,), I32)
        hi = jnp.full((R,), kp, I32)

        def body(_, carry):
            lo, hi = carry
            active = lo < hi
            mid = jnp.minimum((lo + hi) // 2, kp - 1)
            right = ends_ref[base + mid] <= slot  # cluster mid ends at or before the slot
            return jnp.where(active & right, mid + 1, lo), jnp.where(active & ~right, mid, hi)

        c, _ = lax.fori_loop(0, steps, body, (lo, hi))
        c = jnp.minimum(c, kp - 1)
        first = ends_ref[base + c] - w_ref[base + c]  # the cluster's first slot in the list
        pos = starts_ref[base + c] + (slot - first)  # its position in cluster order
        if sorted_layout:
            row = pos
        else:
            row = order_ref[h * s_rows + jnp.clip(pos, 0, s_rows - 1)]
        kept = jnp.minimum(total + window, b_max)
        row = jnp.where(slot < total, row, clustered + (slot - total))
        g = jnp.where(slot < kept, h * s_rows + row, -1)
        gidx_ref[pl.ds(h * bp + t * R, R)] = g

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((h_static * bp_static,), I32),
        grid=(p_static,), compiler_params=ps.compiler_params(num_warps, 1))


def select_call(bits, counts, starts, order, budget, clustered, window, b_max, kp, s_rows, ways_t=0):
    """gidx [H·Bp] (Bp = b_max rounded up to R), kept [H], w [H, K]."""
    h, k = bits.shape
    pad = ((0, 0), (0, kp - k))
    a = make_select_a(kp, h, 8 if kp >= 4096 else 4, ways_t)
    ends, w, total = a(jnp.pad(bits, pad).reshape(-1), jnp.pad(counts, pad).reshape(-1), jnp.array([budget, 0], I32))
    nt = -(-b_max // R)
    bp = nt * R
    b = make_select_b(kp, order is None, h, bp, s_rows, h * nt)
    ordf = order.reshape(-1) if order is not None else jnp.zeros((1,), I32)
    prm = jnp.array([s_rows, clustered, window, b_max, bp, nt, 0, 0], I32)
    gidx = b(ends, w, jnp.pad(starts, pad).reshape(-1), total, ordf, prm)
    kept = jnp.minimum(total + window, b_max)
    return gidx, kept, w.reshape(h, kp)[:, :k]


def timing_layers(hkv, t_ctx, kcl, layers, window, seed):
    """Random per-layer selection inputs for the timings, 10% budget: clustered, budget, b_max, and per layer the
    cluster-score bits [H, K], counts, starts [H, K] and the cluster order [H, t_ctx]."""
    clustered = t_ctx - window
    budget = int(0.1 * clustered)
    b_max = -(-(budget + window) // 64) * 64
    ks = jax.random.split(jax.random.PRNGKey(seed), layers)
    bitss, cnts, stss, ords = [], [], [], []
    for i in range(layers):
        k1, k2 = jax.random.split(ks[i])
        labels = jax.random.randint(k1, (hkv, clustered), 0, kcl)
        c = jax.vmap(lambda x: jnp.bincount(x, length=kcl))(labels).astype(I32)
        cnts.append(c)
        stss.append((jnp.cumsum(c, axis=1) - c).astype(I32))
        bitss.append(lax.bitcast_convert_type(jax.random.uniform(k2, (hkv, kcl), F32), I32))
        ords.append(jax.vmap(lambda x: jnp.argsort(jnp.concatenate([x, jnp.full((window,), kcl)]), stable=True))(labels).astype(I32))
    return clustered, budget, b_max, bitss, cnts, stss, ords


def round7():
    say(f"\n## round 7 (selection in two kernels, R={R}): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    for case, (h, s_rows, k, kp, budget, window, b_max) in enumerate((
            (3, 1000, 40, 64, 300, 16, 320), (2, 1000, 40, 64, 5000, 16, 1024),
            (32, 32768, 1638, 2048, 3266, 100, 3392), (8, 32768, 1638, 2048, 3266, 100, 3392),
            (4, 131072, 6554, 8192, 13097, 100, 13248))):
        clustered, counts, starts, bits, order = p2.select_case(case, h, s_rows, k, window)
        for sorted_layout in (True, False):
            od = None if sorted_layout else order
            try:
                gidx, kept, w = select_call(bits, counts, starts, od, budget, clustered, window, b_max, kp, s_rows)
                idx, valid, rkept, rtaken = p2.select_reference(bits, counts, starts, od, budget, clustered, window, b_max)
                bp = gidx.shape[0] // h
                got = jnp.sort(gidx.reshape(h, bp), axis=1)
                ref = jnp.where(valid, idx + (jnp.arange(h, dtype=I32) * s_rows)[:, None], -1)
                ref = jnp.sort(jnp.pad(ref, ((0, 0), (0, bp - b_max)), constant_values=-1), axis=1)
                ok = bool(jnp.all(got == ref)) and bool(jnp.all(kept == rkept)) and bool(jnp.all(w == rtaken))
                ok_all &= ok
                say(f"select2 check {case} (H={h} S={s_rows} K={k} budget={budget} B={b_max} sorted={sorted_layout}): "
                    f"{'OK' if ok else 'FAIL'} (rows differing {int(jnp.sum(got != ref))}, kept {int(jnp.sum(kept != rkept))}, "
                    f"taken {int(jnp.sum(w != rtaken))})")
            except Exception:  # noqa: BLE001
                ok_all = False
                say(f"select2 check {case} sorted={sorted_layout}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    # speed, chained over layers: the two kernels alone (the cluster scores given), 7B / 8B shapes at 32K and 128K
    for label, hkv, t, kcl, kp, layers in (("LLaMA-2-7B 32K", 32, 32768, 1638, 2048, 16), ("LLaMA-3-8B 32K", 8, 32768, 1638, 2048, 16),
                                           ("LLaMA-2-7B 128K", 32, 131072, 6554, 8192, 16), ("LLaMA-3-8B 128K", 8, 131072, 6554, 8192, 16)):
        try:
            window = 100
            clustered, budget, b_max, bitss, cnts, stss, ords = timing_layers(hkv, t, kcl, layers, window, 7)

            def chain(bits0, *per_layer):
                acc = jnp.int32(0)
                for b_, c_, s_, o_ in zip(*per_layer):
                    g, kept, w = select_call(b_ + acc * 0, c_, s_, o_, budget, clustered, window, b_max, kp, t)
                    acc = acc + g[0] + kept[0]
                return acc

            f = jax.jit(chain)
            tt = ps.timeit(f, (bitss[0], bitss, cnts, stss, ords))
            t_empty = ps.timeit(jax.jit(lambda x: x[0, 0] + 1), (bitss[0],))
            say(f"| {label} | two selection kernels, order layout | {(tt - t_empty) / layers * 1e6:.1f} µs a layer |")
        except Exception:  # noqa: BLE001
            say(f"{label}: timing FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    if os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for kp in (256, 512, 1024, 2048, 4096, 8192, 16384):
            nw = 8 if kp >= 4096 else 4
            a = make_select_a(kp, 8, nw)
            args = (jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((2,), I32))
            with open(os.path.join(outdir, f"select_a_k{kp}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(a).lower(*args).as_text()))
            for sorted_layout in (True, False):
                b = make_select_b(kp, sorted_layout)
                args = (jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((8 * kp,), I32),
                        jax.ShapeDtypeStruct((8,), I32), jax.ShapeDtypeStruct((1 << 16,), I32), jax.ShapeDtypeStruct((8,), I32))
                with open(os.path.join(outdir, f"select_b_k{kp}_r{R}_{'sorted' if sorted_layout else 'order'}.cfg"), "w") as fh:
                    fh.write(p2.extract_config(jax.jit(b).lower(*args).as_text()))
        say(f"wrote {len(os.listdir(outdir))} selection kernel configs to {outdir}")
    say(f"round 7 checks {'passed' if ok_all else 'FAILED'}")


def round8():
    """Kernel A's boundary in passes of T candidates (budget_lo_ways) against round 7's bisection: the same checks,
    then both timed in one run (kernels A + B, and A alone), then (EXPORT=1) kernel A's configs for T = $SEL_T."""
    t_best = int(os.environ.get("SEL_T", "4"))
    say(f"\n## round 8 (kernel A in passes of T candidates): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    for t in (0, 4, 8):
        for case, (h, s_rows, k, kp, budget, window, b_max) in enumerate((
                (3, 1000, 40, 64, 300, 16, 320), (2, 1000, 40, 64, 5000, 16, 1024),
                (32, 32768, 1638, 2048, 3266, 100, 3392), (8, 32768, 1638, 2048, 3266, 100, 3392),
                (4, 131072, 6554, 8192, 13097, 100, 13248))):
            clustered, counts, starts, bits, order = p2.select_case(case, h, s_rows, k, window)
            try:
                gidx, kept, w = select_call(bits, counts, starts, order, budget, clustered, window, b_max, kp, s_rows, t)
                g0, kept0, w0 = select_call(bits, counts, starts, order, budget, clustered, window, b_max, kp, s_rows, 0)
                idx, valid, rkept, rtaken = p2.select_reference(bits, counts, starts, order, budget, clustered, window, b_max)
                ok = bool(jnp.all(kept == rkept)) and bool(jnp.all(w == rtaken)) and bool(jnp.all(gidx == g0))
                ok_all &= ok
                say(f"round 8 check T={t} case {case} (H={h} K={k} budget={budget}): {'OK' if ok else 'FAIL'} "
                    f"(kept {int(jnp.sum(kept != rkept))}, taken {int(jnp.sum(w != rtaken))}, list vs bisection {int(jnp.sum(gidx != g0))})")
            except Exception:  # noqa: BLE001
                ok_all = False
                say(f"round 8 check T={t} case {case}: FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    for label, hkv, t_ctx, kcl, kp in (("LLaMA-2-7B 32K", 32, 32768, 1638, 2048), ("LLaMA-3-8B 32K", 8, 32768, 1638, 2048),
                                       ("LLaMA-2-7B 128K", 32, 131072, 6554, 8192), ("LLaMA-3-8B 128K", 8, 131072, 6554, 8192)):
        layers, window = 16, 100
        clustered, budget, b_max, bitss, cnts, stss, ords = timing_layers(hkv, t_ctx, kcl, layers, window, 8)
        t_empty = ps.timeit(jax.jit(lambda x: x[0, 0] + 1), (bitss[0],))
        for t in (0, 4, 8):
            try:
                def chain(bits0, *per_layer, t=t):
                    acc = jnp.int32(0)
                    for b_, c_, s_, o_ in zip(*per_layer):
                        g, kept, w = select_call(b_ + acc * 0, c_, s_, o_, budget, clustered, window, b_max, kp, t_ctx, t)
                        acc = acc + g[0] + kept[0]
                    return acc

                def chain_a(bits0, *per_layer, t=t):
                    acc = jnp.int32(0)
                    pad = ((0, 0), (0, kp - kcl))
                    a = make_select_a(kp, hkv, 8 if kp >= 4096 else 4, t)
                    for b_, c_ in zip(*per_layer):
                        ends, w, total = a(jnp.pad(b_ + acc * 0, pad).reshape(-1), jnp.pad(c_, pad).reshape(-1), jnp.array([budget, 0], I32))
                        acc = acc + ends[0] + total[0]
                    return acc

                tt = ps.timeit(jax.jit(chain), (bitss[0], bitss, cnts, stss, ords))
                ta = ps.timeit(jax.jit(chain_a), (bitss[0], bitss, cnts))
                say(f"| {label} | T={t} ({'bisection' if t == 0 else 'candidates a pass'}) | kernels A+B {(tt - t_empty) / layers * 1e6:.1f} µs a layer | A alone {(ta - t_empty) / layers * 1e6:.1f} |")
            except Exception:  # noqa: BLE001
                say(f"{label} T={t}: timing FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
    if os.environ.get("EXPORT") and ok_all:
        outdir = os.path.join(ps.OUT, "kernels8")
        os.makedirs(outdir, exist_ok=True)
        for kp in (256, 512, 1024, 2048, 4096, 8192, 16384):
            a = make_select_a(kp, 8, 8 if kp >= 4096 else 4, t_best)
            args = (jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((2,), I32))
            with open(os.path.join(outdir, f"select_a_k{kp}.cfg"), "w") as fh:
                fh.write(p2.extract_config(jax.jit(a).lower(*args).as_text()))
        say(f"wrote {len(os.listdir(outdir))} kernel A configs (T={t_best}) to {outdir}")
    say(f"round 8 checks {'passed' if ok_all else 'FAILED'}")


def round9():
    """Kernel A (bisection) with 4, 8 and 16 warps: checks, A alone timed (16 layers chained), and (EXPORT=1) every
    warps setting's configs (kernels9/select_a_k{Kp}_w{W}.cfg), to embed the fastest per Kp."""
    say(f"\n## round 9 (kernel A's warps): jax {jax.__version__}, {jax.devices()}")
    ok_all = True
    for nw in (4, 8, 16):
        for case, (h, s_rows, k, kp, budget, window, b_max) in enumerate((
                (3, 1000, 40, 64, 300, 16, 320), (2, 1000, 40, 64, 5000, 16, 1024),
                (32, 32768, 1638, 2048, 3266, 100, 3392), (4, 131072, 6554, 8192, 13097, 100, 13248))):
            clustered, counts, starts, bits, order = p2.select_case(case if case < 3 else 4, h, s_rows, k, window)
            pad = ((0, 0), (0, kp - k))
            a = make_select_a(kp, h, nw, 0)
            ends, w, total = a(jnp.pad(bits, pad).reshape(-1), jnp.pad(counts, pad).reshape(-1), jnp.array([budget, 0], I32))
            _, _, rkept, rtaken = p2.select_reference(bits, counts, starts, order, budget, clustered, window, b_max)
            ok = bool(jnp.all(w.reshape(h, kp)[:, :k] == rtaken)) and bool(jnp.all(jnp.minimum(total + window, b_max) == rkept))
            ok_all &= ok
            say(f"round 9 check warps={nw} case {case}: {'OK' if ok else 'FAIL'}")
    for label, hkv, kcl, kp in (("LLaMA-2-7B 32K", 32, 1638, 2048), ("LLaMA-3-8B 32K", 8, 1638, 2048),
                                ("LLaMA-2-7B 128K", 32, 6554, 8192), ("LLaMA-3-8B 128K", 8, 6554, 8192)):
        layers = 16
        clustered = (32768 if kp == 2048 else 131072) - 100
        budget = int(0.1 * clustered)
        ks = jax.random.split(jax.random.PRNGKey(9), layers)
        bitss = [lax.bitcast_convert_type(jax.random.uniform(kk, (hkv, kcl), F32), I32) for kk in ks]
        cnts = [jax.random.randint(kk, (hkv, kcl), 0, 2 * clustered // kcl).astype(I32) for kk in ks]
        t_empty = ps.timeit(jax.jit(lambda x: x[0, 0] + 1), (bitss[0],))
        row = []
        for nw in (4, 8, 16):
            def chain_a(bits0, bl, cl, nw=nw):
                acc = jnp.int32(0)
                pad = ((0, 0), (0, kp - kcl))
                a = make_select_a(kp, hkv, nw, 0)
                for b_, c_ in zip(bl, cl):
                    ends, w, total = a(jnp.pad(b_ + acc * 0, pad).reshape(-1), jnp.pad(c_, pad).reshape(-1), jnp.array([budget, 0], I32))
                    acc = acc + ends[0] + total[0]
                return acc
            ta = ps.timeit(jax.jit(chain_a), (bitss[0], bitss, cnts))
            row.append(f"{nw} warps {(ta - t_empty) / layers * 1e6:.1f}")
        say(f"| {label} | kernel A alone, µs a layer | {' | '.join(row)} |")
    if os.environ.get("EXPORT") and ok_all:
        outdir = os.path.join(ps.OUT, "kernels9")
        os.makedirs(outdir, exist_ok=True)
        for kp in (256, 512, 1024, 2048, 4096, 8192, 16384):
            for nw in (4, 8, 16):
                a = make_select_a(kp, 8, nw, 0)
                args = (jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((8 * kp,), I32), jax.ShapeDtypeStruct((2,), I32))
                with open(os.path.join(outdir, f"select_a_k{kp}_w{nw}.cfg"), "w") as fh:
                    fh.write(p2.extract_config(jax.jit(a).lower(*args).as_text()))
        say(f"wrote {len(os.listdir(outdir))} kernel A configs to {outdir}")
    say(f"round 9 checks {'passed' if ok_all else 'FAILED'}")


if __name__ == "__main__":
    if os.environ.get("ROUND", "7") == "9":
        round9()
    elif os.environ.get("ROUND", "7") == "8":
        round8()
    else:
        round7()
