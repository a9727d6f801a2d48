"""Squeezed Attention's sparse read as one fused GPU kernel (Pallas → Triton), measured on the GPU machine.

Issue 4 asks whether XLA's gathers or a custom kernel reads the kept keys faster. This script writes the
custom kernel with jax's Pallas (Triton backend: the same XLA that the engine's PJRT plugin carries compiles
it), checks it against a plain jnp reference, times it beside dense attention over the whole context in
the same process, and writes the kernel's StableHLO custom call (`__gpu$xla.gpu.triton`) and its Triton IR
to $OUT, for the engine to emit the same call from Go.

The kernel (one program per KV head × context split):
  - the count-weighted budget boundary `lo` over the head's cluster scores (bisection on the float bits,
    as squeeze.budgetBits: count(bits ≥ lo) ≥ budget > count(bits > lo)), in registers;
  - a loop over its split of the context rows, stored sorted by cluster (squeeze.PermuteRows): a row is kept
    if its cluster's bits ≥ lo, or it is a window row (label == Kp); the keys and values are read with masked
    loads, so a dropped row's bytes are never fetched;
  - online softmax over the kept rows; it writes its partial (normalised output, log-sum-exp), merged over the
    splits by log-sum-exp afterwards (as squeeze.Merge).
Clusters at the boundary are kept whole (the XLA path truncates the last one to the budget).

Run on the GPU machine: python3 scripts/gpu/pallas_squeeze.py  (writes $OUT/pallas.md and the kernels).
"""
import functools
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # older layout
    from jax.experimental.pallas import gpu as plgpu

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
REPORT = open(os.path.join(OUT, "pallas.md"), "a")


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    REPORT.write(s + "\n")
    REPORT.flush()


MAXBITS = 0x7F800001  # above +Inf's bits: count(bits ≥ MAXBITS) = 0
NEG = -1e30
F32 = jnp.float32


def compiler_params(num_warps, num_stages):
    for name in ("CompilerParams", "TritonCompilerParams"):
        cls = getattr(plgpu, name, None)
        if cls is not None:
            return cls(num_warps=num_warps, num_stages=num_stages)
    return dict(triton=dict(num_warps=num_warps, num_stages=num_stages))


def masked_load(ref, idx, mask, other):
    if hasattr(plgpu, "load"):
        return plgpu.load(ref.at[idx], mask=mask, other=other)
    return pl.load(ref, idx, mask=mask, other=other)


def budget_lo(bits, counts, budget):
    """Largest lo with Σ counts[bits ≥ lo] ≥ budget (0 if the total is below the budget)."""

    def body(_, carry):
        lo, hi = carry
        mid = lo + (hi - lo + 1) // 2
        n = jnp.sum(jnp.where(bits >= mid, counts, 0))
        ok = n >= budget
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = lax.fori_loop(0, 31, body, (jnp.int32(0), jnp.int32(MAXBITS)))
    return lo


@functools.lru_cache(maxsize=None)
def make_attend(hkv, g, d, t, kp, ns, r, scale, gather, num_warps=4, num_stages=2, debug=False):
    """The fused kernel: returns f(q [H,G,D], bits [H,Kp] i32, counts [H,Kp] i32, lab [H,T] i32, k, v [H,T,D],
    budget [1] i32) -> (o [H,NS,G,D] f32, lse [H,NS,G] f32). gather=False: lab holds each row's bits already
    (window rows MAXBITS-1, padding -1)."""
    rows = t // ns
    iters = rows // r
    assert rows * ns == t and iters * r == rows

    def kernel(q_ref, bits_ref, counts_ref, lab_ref, k_ref, v_ref, budget_ref, o_ref, lse_ref):
        h = pl.program_id(0)
        s = pl.program_id(1)
        lo = budget_lo(bits_ref[h, :], counts_ref[h, :], budget_ref[0])
        q = q_ref[h, :, :].astype(F32)  # [G, D]

        def body(i, carry):
            m, l, acc = carry
            row0 = s * rows + i * r
            lab = lab_ref[h, pl.ds(row0, r)]  # [R]
            if gather:
                b = bits_ref[h, jnp.minimum(lab, kp - 1)]
                keep = (lab == kp) | ((lab < kp) & (b >= lo))
            else:
                keep = lab >= lo
            k = masked_load(k_ref, (h, pl.ds(row0, r), slice(None)), keep[:, None], 0.0).astype(F32)  # [R, D]
            sc = jnp.sum(q[:, None, :] * k[None, :, :], axis=-1) * scale  # [G, R]
            sc = jnp.where(keep[None, :], sc, NEG)
            m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(keep[None, :], jnp.exp(sc - m_new[:, None]), 0.0)
            l = l * alpha + jnp.sum(p, axis=-1)
            v = masked_load(v_ref, (h, pl.ds(row0, r), slice(None)), keep[:, None], 0.0).astype(F32)
            acc = acc * alpha[:, None] + jnp.sum(p[:, :, None] * v[None, :, :], axis=1)
            return m_new, l, acc

        m0 = jnp.full((g,), NEG, F32)
        l0 = jnp.zeros((g,), F32)
        a0 = jnp.zeros((g, d), F32)
        m, l, acc = lax.fori_loop(0, iters, body, (m0, l0, a0))
        o_ref[h, s, :, :] = acc / jnp.maximum(l, 1e-30)[:, None]
        lse_ref[h, s, :] = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), -jnp.inf)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((hkv, ns, g, d), F32), jax.ShapeDtypeStruct((hkv, ns, g), F32)),
        grid=(hkv, ns),
        compiler_params=compiler_params(num_warps, num_stages),
        debug=debug,
    )


def merge_splits(o, lse):
    """o [H,NS,G,D], lse [H,NS,G] -> out [H,G,D], lse [H,G] (log-sum-exp merge, as squeeze.Merge)."""
    mx = jnp.max(lse, axis=1)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    w = jnp.exp(lse - mx[:, None, :])  # -inf → 0
    sw = jnp.sum(w, axis=1)
    out = jnp.sum(w[..., None] * o, axis=1) / jnp.maximum(sw, 1e-30)[..., None]
    return out, jnp.where(sw > 0, mx + jnp.log(jnp.maximum(sw, 1e-30)), -jnp.inf)


def row_bits(bits, lab, kp):
    """The rows' cluster bits for the kernel without an in-kernel gather: window rows always pass, padding never."""
    b = jnp.take_along_axis(bits, jnp.minimum(lab, kp - 1), axis=1)
    return jnp.where(lab == kp, MAXBITS - 1, jnp.where(lab < kp, b, -1))


def reference(q, bits, counts, lab, k, v, budget, scale, kp):
    """Plain jnp: lo from a sort (independent of the bisection), then exact masked attention over all rows."""
    order = jnp.argsort(-bits, axis=1)
    sb = jnp.take_along_axis(bits, order, axis=1)
    cs = jnp.cumsum(jnp.take_along_axis(counts, order, axis=1), axis=1)
    j = jnp.argmax(cs >= budget, axis=1)
    lo = jnp.where(cs[:, -1] >= budget, jnp.take_along_axis(sb, j[:, None], axis=1)[:, 0], 0)
    b = jnp.take_along_axis(bits, jnp.minimum(lab, kp - 1), axis=1)
    keep = (lab == kp) | ((lab < kp) & (b >= lo[:, None]))  # [H, T]
    sc = jnp.einsum("hgd,htd->hgt", q.astype(F32), k.astype(F32)) * scale
    sc = jnp.where(keep[:, None, :], sc, -jnp.inf)
    mx = jnp.max(sc, axis=-1, keepdims=True)
    e = jnp.exp(sc - mx)
    sm = jnp.sum(e, axis=-1, keepdims=True)
    out = jnp.einsum("hgt,htd->hgd", e / sm, v.astype(F32))
    return out, (mx + jnp.log(sm))[..., 0], keep


def scores_bits(q, cent, counts, scale):
    """The engine's lookup (logClusterProbZ + ClusterScores + ScoreBits): mean over the group of the clusters'
    count-weighted softmax probabilities, as float bits."""
    lg = jnp.einsum("hgd,hkd->hgk", q.astype(F32), cent.astype(F32)) * scale
    lg = lg + jnp.where(counts > 0, jnp.log(jnp.maximum(counts, 1).astype(F32)), -jnp.inf)[:, None, :]
    p = jax.nn.softmax(lg, axis=-1)
    s = jnp.mean(p, axis=1)
    s = jnp.where(s > 0, s, 0.0)
    return lax.bitcast_convert_type(s, jnp.int32)


def make_data(key, hkv, g, d, t, k_clusters, kp, window, dtype=jnp.bfloat16):
    ks = jax.random.split(key, 6)
    clustered = t - window
    labels = jnp.sort(jax.random.randint(ks[0], (hkv, clustered), 0, k_clusters), axis=1).astype(jnp.int32)
    counts = jax.vmap(lambda x: jnp.bincount(x, length=kp))(labels).astype(jnp.int32)
    lab = jnp.concatenate([labels, jnp.full((hkv, window), kp, jnp.int32)], axis=1)
    q = jax.random.normal(ks[1], (hkv, g, d), F32).astype(dtype)
    cent = jax.random.normal(ks[2], (hkv, kp, d), F32).astype(dtype)
    kk = jax.random.normal(ks[3], (hkv, t, d), F32).astype(dtype)
    vv = jax.random.normal(ks[4], (hkv, t, d), F32).astype(dtype)
    return q, cent, counts, lab, kk, vv


def chain_layers(layer_fn):
    """A jitted chain of layers: layer_fn(q, *args of one layer) → [H, G, D] float32; each layer's query depends
    on the previous layer's output (so none is skipped), the outputs summed."""
    def f(q, *per_layer):
        acc = jnp.zeros(q.shape, F32)
        qq = q
        for args in zip(*per_layer):
            out = layer_fn(qq, *args)
            acc = acc + out
            qq = (q.astype(F32) + 1e-6 * out).astype(q.dtype)
        return acc
    return jax.jit(f)


def dense_layer(scale):
    """Dense attention of q [H, G, D] over keys/values [H, T, D] (bf16 products, float32 accumulation)."""
    def layer(qq, kk, vv):
        sc = jnp.einsum("hgd,htd->hgt", qq, kk, preferred_element_type=F32) * scale
        p = jax.nn.softmax(sc, axis=-1)
        return jnp.einsum("hgt,htd->hgd", p.astype(kk.dtype), vv, preferred_element_type=F32)
    return layer


def timeit(f, args, n=30):
    r = f(*args)
    jax.block_until_ready(r)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def check(name, hkv, g, d, t, k_clusters, kp, window, budget, ns, r, gather):
    scale = 1.0 / d**0.5
    q, cent, counts, lab, kk, vv = make_data(jax.random.PRNGKey(1), hkv, g, d, t, k_clusters, kp, window)
    bits = scores_bits(q, cent, counts, scale)
    att = make_attend(hkv, g, d, t, kp, ns, r, scale, gather)
    inp = lab if gather else row_bits(bits, lab, kp)
    bud = jnp.array([budget], jnp.int32)
    o, lse = jax.jit(att)(q, bits, counts, inp, kk, vv, bud)
    out, lse_m = merge_splits(o, lse)
    ro, rl, keep = reference(q, bits, counts, lab, kk, vv, budget, scale, kp)
    kept = float(jnp.mean(jnp.sum(keep, axis=1)))
    eo = float(jnp.max(jnp.abs(out - ro)))
    el = float(jnp.max(jnp.abs(lse_m - rl)))
    ok = eo < 2e-3 and el < 2e-3
    say(f"check {name} gather={gather}: kept rows/head {kept:.0f} of {t} (budget {budget}+window {window}); "
        f"max |out-ref| {eo:.2e}, |lse-ref| {el:.2e} -> {'OK' if ok else 'FAIL'}")
    return ok


def bench(label, hkv, g, d, t, k_clusters, kp, window, frac, layers, configs, gather):
    scale = 1.0 / d**0.5
    budget = int(frac * (t - window))
    data = [make_data(jax.random.PRNGKey(10 + i), hkv, g, d, t, k_clusters, kp, window) for i in range(layers)]
    q = data[0][0]
    cents = [x[1] for x in data]
    counts = [x[2] for x in data]
    labs = [x[3] for x in data]
    kks = [x[4] for x in data]
    vvs = [x[5] for x in data]
    bud = jnp.array([budget], jnp.int32)

    dense = dense_layer(scale)

    chain = chain_layers

    empty = jax.jit(lambda q, *a: q.astype(F32) + 1.0)
    t_empty = timeit(empty, (q,))
    t_dense = timeit(chain(dense), (q, kks, vvs))
    per = lambda tt: (tt - t_empty) / layers * 1e6
    kv_bytes = 2 * hkv * t * d * 2
    say(f"\n### {label}: H={hkv} G={g} D={d} T={t} K={k_clusters} (Kp={kp}) budget {budget} ({frac}) window {window}, "
        f"{layers} layers chained; empty call {t_empty*1e6:.0f} µs")
    say(f"| variant | µs/layer | × dense | GB/s of all K+V (dense) or kept K+V |")
    say(f"|---|---:|---:|---:|")
    dd = per(t_dense)
    say(f"| dense (jnp einsum, bf16, f32 acc) | {dd:.1f} | 1.00 | {kv_bytes/dd/1e3:.0f} |")
    kept_bytes = 2 * hkv * (budget + window) * d * 2
    for ns, r, nw, st in configs:
        att = make_attend(hkv, g, d, t, kp, ns, r, scale, gather, nw, st)

        def sq_layer(qq, cent, cnt, lab, kk, vv, att=att):
            bits = scores_bits(qq, cent, cnt, scale)
            inp = lab if gather else row_bits(bits, lab, kp)
            o, lse = att(qq, bits, cnt, inp, kk, vv, bud)
            return merge_splits(o, lse)[0]

        bits0 = [scores_bits(q, c, n, scale) for c, n in zip(cents, counts)]
        inps = labs if gather else [row_bits(b, l, kp) for b, l in zip(bits0, labs)]

        def kern_layer(qq, b, cnt, inp, kk, vv, att=att):
            o, lse = att(qq, b, cnt, inp, kk, vv, bud)
            return o[:, 0]

        try:
            tf = per(timeit(chain(sq_layer), (q, cents, counts, labs, kks, vvs)))
            tk = per(timeit(chain(kern_layer), (q, bits0, counts, inps, kks, vvs)))
        except Exception as e:  # noqa: BLE001
            say(f"| NS={ns} R={r} warps={nw} stages={st} | failed: {str(e)[:200]} | | |")
            continue
        say(f"| squeezed, whole layer (lookup + kernel + merge), NS={ns} R={r} warps={nw} stages={st} | {tf:.1f} | "
            f"{dd/tf:.2f} | {kept_bytes/tf/1e3:.0f} |")
        say(f"| kernel alone, same | {tk:.1f} | {dd/tk:.2f} | {kept_bytes/tk/1e3:.0f} |")


def export(name, hkv, g, d, t, kp, ns, r, gather, num_warps=4, num_stages=2):
    scale = 1.0 / d**0.5
    att = make_attend(hkv, g, d, t, kp, ns, r, scale, gather, num_warps, num_stages)
    args = (jax.ShapeDtypeStruct((hkv, g, d), jnp.bfloat16), jax.ShapeDtypeStruct((hkv, kp), jnp.int32),
            jax.ShapeDtypeStruct((hkv, kp), jnp.int32), jax.ShapeDtypeStruct((hkv, t), jnp.int32),
            jax.ShapeDtypeStruct((hkv, t, d), jnp.bfloat16), jax.ShapeDtypeStruct((hkv, t, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((1,), jnp.int32))
    txt = jax.jit(att).lower(*args).as_text()
    path = os.path.join(OUT, f"kernel_{name}.mlir")
    with open(path, "w") as f:
        f.write(txt)
    say(f"exported {path} ({len(txt)} chars)")


def main():
    say(f"jax {jax.__version__}, devices {jax.devices()}")
    gather = True
    try:
        ok = check("tiny", 2, 4, 64, 1024, 40, 64, 16, 300, 4, 32, True)
    except Exception:  # noqa: BLE001
        say("in-kernel gather failed to lower/run:\n" + traceback.format_exc()[-3000:])
        gather = False
    if not gather:
        ok = check("tiny", 2, 4, 64, 1024, 40, 64, 16, 300, 4, 32, False)
    # the debug print of one small kernel: its Triton IR
    try:
        make_attend(2, 4, 64, 1024, 64, 4, 32, 0.125, gather, 4, 2, True)
        scale = 0.125
        q, cent, counts, lab, kk, vv = make_data(jax.random.PRNGKey(2), 2, 4, 64, 1024, 40, 64, 16)
        bits = scores_bits(q, cent, counts, scale)
        inp = lab if gather else row_bits(bits, lab, 64)
        jax.block_until_ready(jax.jit(make_attend(2, 4, 64, 1024, 64, 4, 32, 0.125, gather, 4, 2, True))(
            q, bits, counts, inp, kk, vv, jnp.array([300], jnp.int32)))
    except Exception:  # noqa: BLE001
        say("debug print failed:\n" + traceback.format_exc()[-1500:])
    ok &= check("7b-mha", 32, 1, 128, 32768, 1638, 2048, 100, 3276, 32, 32, gather)
    ok &= check("8b-gqa", 8, 4, 128, 32768, 1638, 2048, 100, 3276, 32, 32, gather)
    ok &= check("all-kept", 4, 2, 128, 4096, 200, 256, 100, 10**6, 8, 32, gather)
    export("tiny", 2, 4, 64, 1024, 64, 4, 32, gather)
    export("7b_32k", 32, 1, 128, 32768, 2048, 32, 32, gather)
    cfgs = [(16, 32, 4, 2), (32, 32, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 16, 2, 2), (32, 32, 4, 3)]
    bench("LLaMA-2-7B shape, 32K, decode", 32, 1, 128, 32768, 1638, 2048, 100, 0.1, 16, cfgs, gather)
    bench("LLaMA-3-8B shape, 32K, decode", 8, 4, 128, 32768, 1638, 2048, 100, 0.1, 16, cfgs[:4], gather)
    bench("LLaMA-2-7B shape, 128K, decode", 32, 1, 128, 131072, 6554, 8192, 100, 0.1, 8,
          [(64, 32, 4, 2), (128, 32, 4, 2), (128, 64, 4, 2)], gather)
    say("\nall checks passed" if ok else "\nSOME CHECKS FAILED")


if __name__ == "__main__":
    main()
