"""Round 6 (session 9): the cluster-run kernel. The paged kernel (pallas_squeeze2.py, make_paged_dyn) reads the kept
rows through a per-slot index list, and writing that list (cumulative sums, a binary search per slot: ~10 XLA
kernels) cost as much as the attention. Here each program walks a block of CPP clusters of one KV head and reads
the kept rows of each straight from its run in cluster order: w [H, Kw] (rows to take from each cluster: its count
when it is kept, else 0; the observation window is one more run) and st [H, Kw] (the run's first slot in cluster
order), through order (slot → row) or, for keys stored sorted by cluster, directly. No list, no cumulative sum.

Checks against plain jnp attention over the same kept rows (sorted and permuted layouts), times it against the paged
kernel over the equivalent list and dense attention, and exports configs (CPAGED=r,cpp,warps;... EXPORT=1).
Run on the GPU machine: python3 scripts/gpu/pallas_squeeze3.py (appends to $OUT/pallas.md).
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


@functools.lru_cache(maxsize=None)
def make_cpaged(g, d, r, cpp, n, p, hq, sorted_layout=False, dtype=jnp.bfloat16, num_warps=4, num_stages=2):
    """grid (P,): P = KV heads × NS; program (h, s) attends the kept rows of clusters [s·CPP, (s+1)·CPP) of head h.
    q [H, G, D]; w, st [P·CPP] int32; order [N] int32 (slot h·S + i → the head's local row); keys, values [N, D];
    prm [2] int32: NS, S; scale [1] f32. Outputs o [P, G, D] f32, lse [P, G] f32 (-inf where no row was seen)."""

    def kernel(q_ref, w_ref, st_ref, ord_ref, k_ref, v_ref, prm_ref, scale_ref, o_ref, lse_ref):
        pid = pl.program_id(0)
        ns = prm_ref[0]
        s_rows = prm_ref[1]
        h = pid // ns
        scale = scale_ref[0]
        q_rows = [q_ref[h, gi, :].astype(F32) for gi in range(g)]
        wv = w_ref[pl.ds(pid * cpp, cpp)]
        sv = st_ref[pl.ds(pid * cpp, cpp)]
        ar = jnp.arange(cpp, dtype=I32)
        rr = jnp.arange(r, dtype=I32)
        hs = h * s_rows

        def cluster(i, carry):
            wc = jnp.sum(jnp.where(ar == i, wv, 0))
            sc = jnp.sum(jnp.where(ar == i, sv, 0))

            def tile(t, carry):
                j = t * r + rr
                keep = j < wc
                slot = hs + sc + jnp.where(keep, j, 0)
                row = slot if sorted_layout else hs + ord_ref[slot]
                k = k_ref[row, :].astype(F32)
                v = v_ref[row, :].astype(F32)
                return p2._online(q_rows, k, v, keep, scale, carry)

            return lax.fori_loop(0, (wc + r - 1) // r, tile, carry)

        p2._finish_program(o_ref, lse_ref, pid, lax.fori_loop(0, cpp, cluster, p2._init(g, d)), g)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((p, g, d), F32), jax.ShapeDtypeStruct((p, g), F32)),
        grid=(p,), compiler_params=ps.compiler_params(num_warps, num_stages))


def runs(bits, counts, lo, kc, window, clustered, cpp):
    """w, st [H, NS·CPP]: the kept clusters' counts (bits ≥ lo: ties whole) and first slots, then the window run."""
    hq = bits.shape[0]
    c = counts[:, :kc]
    w = jnp.where(bits[:, :kc] >= lo[:, None], c, 0)
    st = jnp.cumsum(c, axis=1) - c
    ns = -(-(kc + 1) // cpp)
    pad = ns * cpp - kc - 1
    w = jnp.concatenate([w, jnp.full((hq, 1), window, I32), jnp.zeros((hq, pad), I32)], axis=1)
    st = jnp.concatenate([st, jnp.full((hq, 1), clustered, I32), jnp.zeros((hq, pad), I32)], axis=1)
    return w.astype(I32), st.astype(I32), ns


def cpaged_call(q, w, st, order, k, v, ns, cpp, r, scale, sorted_layout=False, num_warps=4):
    hq, g, d = q.shape
    t = k.shape[1]
    kern = make_cpaged(g, d, r, cpp, hq * t, hq * ns, hq, sorted_layout, k.dtype, num_warps)
    prm = jnp.array([ns, t], I32)
    o, lse = kern(q, w.reshape(-1), st.reshape(-1), order.reshape(-1), k.reshape(hq * t, d), v.reshape(hq * t, d), prm,
                  jnp.array([scale], F32))
    return ps.merge_splits(o.reshape(hq, ns, g, d), lse.reshape(hq, ns, g))


def lo_of(bits, counts, budget):
    order = jnp.argsort(-bits, axis=1)
    sb = jnp.take_along_axis(bits, order, axis=1)
    cs = jnp.cumsum(jnp.take_along_axis(counts, order, axis=1), axis=1)
    j = jnp.argmax(cs >= budget, axis=1)
    return jnp.where(cs[:, -1] >= budget, jnp.take_along_axis(sb, j[:, None], axis=1)[:, 0], 0)


def lower_cfg(g, d, r, cpp, nw, st):
    n, p, hq = 1 << 20, 64, 8
    kern = make_cpaged(g, d, r, cpp, n, p, hq, False, jnp.bfloat16, nw, st)
    args = (jax.ShapeDtypeStruct((hq, g, d), jnp.bfloat16), jax.ShapeDtypeStruct((p * cpp,), I32),
            jax.ShapeDtypeStruct((p * cpp,), I32), jax.ShapeDtypeStruct((n,), I32),
            jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((2,), I32), jax.ShapeDtypeStruct((1,), F32))
    return p2.extract_config(jax.jit(kern).lower(*args).as_text())


def round6():
    say(f"\n## round 6 (cluster-run kernel): jax {jax.__version__}, {jax.devices()}")
    combos = [tuple(int(x) for x in c.split(",")) for c in os.environ.get("CPAGED", "32,32,4;16,32,2;32,64,4").split(";")]
    if os.environ.get("EXPORT"):
        outdir = os.path.join(ps.OUT, "kernels")
        os.makedirs(outdir, exist_ok=True)
        for r, cpp, nw in combos:
            for d in (64, 128):
                for g in range(1, 9):
                    with open(os.path.join(outdir, f"cpaged_g{g}_d{d}_r{r}_c{cpp}_w{nw}.cfg"), "w") as f:
                        f.write(lower_cfg(g, d, r, cpp, nw, 2))
        say(f"wrote {len(os.listdir(outdir))} configs to {outdir}")
    for label, hkv, g, t, kcl, kp, layers in (("LLaMA-2-7B 32K", 32, 1, 32768, 1638, 2048, 16),
                                              ("LLaMA-3-8B 32K", 8, 4, 32768, 1638, 2048, 16),
                                              ("LLaMA-2-7B 128K", 32, 1, 131072, 6554, 8192, 8),
                                              ("LLaMA-3-8B 128K", 8, 4, 131072, 6554, 8192, 8)):
        try:
            bench(label, hkv, g, t, kcl, kp, layers, combos)
        except Exception:  # noqa: BLE001
            say(f"{label}: FAILED\n```\n{traceback.format_exc()[-3000:]}\n```")


def bench(label, hkv, g, t, kcl, kp, layers, combos):
    d, window = 128, 100
    scale = 1.0 / d**0.5
    clustered = t - window
    budget = int(0.1 * clustered)
    data = [ps.make_data(jax.random.PRNGKey(20 + i), hkv, g, d, t, kcl, kp, window) for i in range(layers)]
    q = data[0][0]
    kks = [x[4] for x in data]
    vvs = [x[5] for x in data]
    bits = [ps.scores_bits(q, x[1], x[2], scale) for x in data]
    los = [lo_of(b_, x[2], budget) for b_, x in zip(bits, data)]
    ref = ps.reference(q, bits[0], data[0][2], data[0][3], kks[0], vvs[0], budget, scale, kp)
    ro, rl, keep0 = ref
    ident = jnp.broadcast_to(jnp.arange(t, dtype=I32), (hkv, t))
    # permuted layout: rows stored in a random order, order[h, slot] = the row holding cluster-order slot `slot`
    perm = jax.vmap(lambda k_: jax.random.permutation(k_, t))(jax.random.split(jax.random.PRNGKey(5), hkv)).astype(I32)
    kperm = jax.vmap(lambda x, p_: jnp.zeros_like(x).at[p_].set(x))(kks[0], perm)
    vperm = jax.vmap(lambda x, p_: jnp.zeros_like(x).at[p_].set(x))(vvs[0], perm)
    t_empty = ps.timeit(jax.jit(lambda q, *a: q.astype(F32) + 1.0), (q,))
    per = lambda tt: (tt - t_empty) / layers * 1e6

    dd = per(ps.timeit(ps.chain_layers(ps.dense_layer(scale)), (q, kks, vvs)))
    nkept = int(jnp.max(jnp.sum(keep0, axis=1)))
    bsz = -(-nkept // 64) * 64
    idxs = [p2.kept_index(ps.reference(q, b_, x[2], x[3], x[4], x[5], budget, scale, kp)[2], bsz) if i == 0 else None
            for i, (b_, x) in enumerate(zip(bits, data))]
    idxs = [idxs[0]] + [p2.kept_index(jnp.where(x[3] == kp, True, jnp.take_along_axis(b_, jnp.minimum(x[3], kp - 1), axis=1) >= lo[:, None])
                                      & (x[3] <= kp), bsz) for b_, x, lo in zip(bits[1:], data[1:], los[1:])]
    tp = per(ps.timeit(ps.chain_layers(lambda qq, ix, k, v: p2.paged_dyn_call(qq, ix, k, v, 32, 32, scale)[0]), (q, idxs, kks, vvs)))
    say(f"\n### round 6, {label}: dense {dd:.1f} µs/layer; paged kernel over the list (R=32 NS=32) {tp:.1f} µs "
        f"({dd/tp:.2f}×); kept rows/head ≤ {nkept}")
    say("| cluster-run kernel | layout | max err out | max err lse | µs/layer | × dense | × paged |")
    say("|---|---|---:|---:|---:|---:|---:|")
    for r, cpp, nw in combos:
        wsts = [runs(b_, x[2], lo, kcl, window, clustered, cpp) for b_, x, lo in zip(bits, data, los)]
        ns = wsts[0][2]
        for layout in ("order", "sorted", "permuted"):
            srt = layout == "sorted"
            kk0, vv0, od = (kperm, vperm, perm) if layout == "permuted" else (kks[0], vvs[0], ident)
            try:
                o, l_ = jax.jit(lambda q, w, s, od, k, v: cpaged_call(q, w, s, od, k, v, ns, cpp, r, scale, srt, nw))(
                    q, wsts[0][0], wsts[0][1], od, kk0, vv0)
                e1 = float(jnp.max(jnp.abs(o - ro)))
                e2 = float(jnp.max(jnp.abs(l_ - rl)))
                if layout == "permuted":
                    tt = float("nan")
                else:
                    tt = per(ps.timeit(ps.chain_layers(lambda qq, w, s, k, v: cpaged_call(qq, w, s, ident, k, v, ns, cpp, r, scale, srt, nw)[0]),
                                       (q, [x[0] for x in wsts], [x[1] for x in wsts], kks, vvs)))
                say(f"| R={r} CPP={cpp} warps={nw} (NS={ns}) | {layout} | {e1:.1e} | {e2:.1e} | {tt:.1f} | {dd/tt:.2f} | {tp/tt:.2f} |")
            except Exception:  # noqa: BLE001
                say(f"| R={r} CPP={cpp} warps={nw} | {layout} | FAILED | | | | |\n```\n{traceback.format_exc()[-2500:]}\n```")


if __name__ == "__main__":
    round6()
