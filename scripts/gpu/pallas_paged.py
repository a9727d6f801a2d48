"""Round 14 (session 12): the paged kernel (squeeze.SparseAttentionPaged; pallas_squeeze2.make_paged_dyn, the engine's
since session 8) with its gathers prefetched a block ahead.

Session 11 measured the paged kernel and its merge at 30.7 µs a layer over the 55 MB of a LLaMA-2-7B 32K decode
step's kept rows (1.8 TB/s) and at about the same time over 14 MB (LLaMA-3-8B 32K): bound by the chain of dependent
loads of each block (32 list entries, then the 32 key rows and 32 value rows they name, then the products), not by
bandwidth. Each of its 1,024 programs (32 heads × 32 splits) walks only 3-4 such blocks at 32K and 13 at 128K, one
after the other.

The variants keep make_paged_dyn's contract exactly (operands q [H,G,D] bf16, gidx [P·iters·R] i32, keys/values
[N,D] bf16, prm [iters, ns] i32, scale [1] f32; outputs o [P,G,D], lse [P,G] f32), so an exported config drops into
squeeze/kernels/paged_g{G}_d{D}.cfg.gz with no change on the Go side:
- pf1: block i+1's list entries and key/value rows are loaded before block i's products (a loop-carried block);
- pf2: also block i+2's list entries, so that block i+1's row gathers start without waiting for their indices.
Loads past the program's last block re-read its last block (clamped), never another program's or past the list.

Checks each variant against make_paged_dyn and the masked-dense reference, times them (16 layers chained, 8 at 128K,
µs a layer with an empty call subtracted, XLA's merge of the splits included as in the engine) at the LLaMA-2-7B
and LLaMA-3-8B shapes, 32K and 128K, and with EXPORT=1 writes every variant's configs (G = 1..8, D = 64, 128, R 32,
4 warps; pf2 with 1 and 2 stages) to $OUT/kernels/paged_{variant}_s{stages}_g{G}_d{D}.cfg, after ir_diff (session 13:
the Triton modules of two shape sets, their whole diff in $OUT/paged_pf2_ir_diff.txt) and the escaped-IR check
(IR equal for two shape sets: false for every variant, the embedded one too; the diff shows why it does not matter).
EXPORT_ONLY=1 skips the timings. Since session 13 pf2 (1 stage) is embedded for G = 2..8 (squeeze/kernels/README.md).
Run on the GPU machine: python3 scripts/gpu/pallas_paged.py (appends to $OUT/pallas.md).
"""
import functools
import os
import sys

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
def make_paged_pf(variant, g, d, r, n, p, hq, dtype=jnp.bfloat16, num_warps=4, num_stages=2, debug=False):
    """make_paged_dyn's kernel with its blocks prefetched (variant "pf1" or "pf2", see the module comment)."""

    def kernel(q_ref, idx_ref, k_ref, v_ref, prm_ref, scale_ref, o_ref, lse_ref):
        pid = pl.program_id(0)
        iters = prm_ref[0]
        ns = prm_ref[1]
        h = pid // ns
        scale = scale_ref[0]
        q_rows = [q_ref[h, gi, :].astype(F32) for gi in range(g)]
        base = pid * iters * r

        def entries(i):  # block i's list entries, clamped to the program's last block
            return idx_ref[pl.ds(base + jnp.minimum(i, iters - 1) * r, r)]

        def rows(ix):
            ixc = jnp.maximum(ix, 0)
            return k_ref[ixc, :], v_ref[ixc, :]

        if variant == "pf1":
            def body(i, carry):
                (ix, k, v), st = carry
                ix_n = entries(i + 1)
                nxt = (ix_n,) + rows(ix_n)
                st = p2._online(q_rows, k.astype(F32), v.astype(F32), ix >= 0, scale, st)
                return nxt, st

            ix0 = entries(0)
            _, st = lax.fori_loop(0, iters, body, ((ix0,) + rows(ix0), p2._init(g, d)))
        else:
            def body(i, carry):
                ix_n, (ix, k, v), st = carry  # ix_n: block i+1's entries, loaded an iteration ago
                cur = (ix_n,) + rows(ix_n)
                ix_nn = entries(i + 2)
                st = p2._online(q_rows, k.astype(F32), v.astype(F32), ix >= 0, scale, st)
                return ix_nn, cur, st

            ix0 = entries(0)
            _, _, st = lax.fori_loop(0, iters, body, (entries(1), (ix0,) + rows(ix0), p2._init(g, d)))
        p2._finish_program(o_ref, lse_ref, pid, st, g)

    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((p, g, d), F32), jax.ShapeDtypeStruct((p, g), F32)),
        grid=(p,), compiler_params=ps.compiler_params(num_warps, num_stages), debug=debug)


def make_kernel(variant, g, d, r, n, p, hq, dtype=jnp.bfloat16, num_warps=4, num_stages=2, debug=False):
    if variant == "base":
        return p2.make_paged_dyn(g, d, r, n, p, hq, dtype, num_warps, num_stages)
    return make_paged_pf(variant, g, d, r, n, p, hq, dtype, num_warps, num_stages, debug)


def paged_call(variant, q, idx_hb, k, v, ns, r, scale, num_warps=4, num_stages=2):
    """p2.paged_dyn_call with the kernel of the given variant."""
    hq, g, d = q.shape
    t = k.shape[1]
    b = idx_hb.shape[1]
    iters = -(-b // (ns * r))
    bp = ns * iters * r
    gidx = jnp.where(idx_hb >= 0, idx_hb + (jnp.arange(hq, dtype=I32) * t)[:, None], -1)
    gidx = jnp.pad(gidx, ((0, 0), (0, bp - b)), constant_values=-1).reshape(-1)
    kern = make_kernel(variant, g, d, r, hq * t, hq * ns, hq, k.dtype, num_warps, num_stages)
    prm = jnp.array([iters, ns], I32)
    o, lse = kern(q, gidx, k.reshape(hq * t, d), v.reshape(hq * t, d), prm, jnp.array([scale], F32))
    return ps.merge_splits(o.reshape(hq, ns, g, d), lse.reshape(hq, ns, g))


def lower_cfg(variant, g, d, r, n, p, hq, nw, st, debug=False):
    kern = make_kernel(variant, g, d, r, n, p, hq, jnp.bfloat16, nw, st, debug)
    args = (jax.ShapeDtypeStruct((hq, g, d), jnp.bfloat16), jax.ShapeDtypeStruct((p * 256,), I32),
            jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((2,), I32), jax.ShapeDtypeStruct((1,), F32))
    return p2.extract_config(jax.jit(kern).lower(*args).as_text())


VARIANTS = ("base", "pf1", "pf2")


def ir_diff(v="pf2", st=1):
    """Session 13: what differs between the variant's Triton modules lowered for two shape sets (debug=True prints
    them), and whether the base kernel's escaped IR passes the same check."""
    import contextlib
    import difflib
    import io
    import re
    texts = []
    for n, p, hq in ((1 << 20, 64, 8), (12345, 7, 3)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            lower_cfg(v, 4, 128, 32, n, p, hq, 4, st, True)
        texts.append(buf.getvalue())
    strip = lambda t: [re.sub(r"loc\(.*?\)|#loc\d*", "", ln) for ln in t.splitlines() if not ln.startswith("#loc")]
    d = list(difflib.unified_diff(strip(texts[0]), strip(texts[1]), lineterm="", n=1))
    with open(os.path.join(ps.OUT, f"paged_{v}_ir_diff.txt"), "w") as fh:
        fh.write("\n".join(d))
    say(f"{v} stages {st}: debug print diff between shape sets ({len(texts[0])} / {len(texts[1])} chars), {len(d)} lines, first 60:\n```\n" +
        "\n".join(x[:300] for x in d[:60]) + "\n```")
    a = p2.ir_of(lower_cfg("base", 4, 128, 32, 1 << 20, 64, 8, 4, 2))
    b = p2.ir_of(lower_cfg("base", 4, 128, 32, 12345, 7, 3, 4, 2))
    say(f"base: escaped IR equal for the two shape sets: {a == b}")
    c1 = lower_cfg(v, 4, 128, 32, 1 << 20, 64, 8, 4, st)
    c2 = lower_cfg(v, 4, 128, 32, 1 << 20, 64, 8, 4, st)
    c3 = lower_cfg(v, 4, 128, 32, 1 << 21, 128, 8, 4, st)
    say(f"{v}: escaped IR equal when lowered twice alike: {p2.ir_of(c1) == p2.ir_of(c2)}; for N 2^21, P 128: {p2.ir_of(c1) == p2.ir_of(c3)}")


def export():
    outdir = os.path.join(ps.OUT, "kernels")
    os.makedirs(outdir, exist_ok=True)
    try:
        ir_diff("pf2", 1)
    except Exception as e:  # noqa: BLE001
        say(f"ir_diff failed: {str(e)[:300]}")
    for v in VARIANTS[1:]:
        a = p2.ir_of(lower_cfg(v, 4, 128, 32, 1 << 20, 64, 8, 4, 2))
        b = p2.ir_of(lower_cfg(v, 4, 128, 32, 12345, 7, 3, 4, 2))
        say(f"{v}: IR independent of N, P, H: {a == b} ({len(a)} chars escaped)")
        for d in (64, 128):
            for g in range(1, 9):
                for st in ((2, 1) if v == "pf2" else (2,)):
                    with open(os.path.join(outdir, f"paged_{v}_s{st}_g{g}_d{d}.cfg"), "w") as f:
                        f.write(lower_cfg(v, g, d, 32, 1 << 20, 64, 8, 4, st))
    say(f"wrote {len(os.listdir(outdir))} kernel configs to {outdir}")


def main():
    say(f"\n## round 14 (paged kernel, prefetched blocks): jax {jax.__version__}, {jax.devices()}")
    if os.environ.get("EXPORT"):
        export()
        if os.environ.get("EXPORT_ONLY"):
            return
    r, d, window = 32, 128, 100
    cases = (("LLaMA-2-7B 32K", 32, 1, 32768, 1638, 2048, 16), ("LLaMA-3-8B 32K", 8, 4, 32768, 1638, 2048, 16),
             ("LLaMA-2-7B 128K", 32, 1, 131072, 6554, 8192, 8), ("LLaMA-3-8B 128K", 8, 4, 131072, 6554, 8192, 8))
    for label, hkv, g, t, kcl, kp, layers in cases:
        scale = 1.0 / d**0.5
        budget = int(0.1 * (t - window))
        data = [ps.make_data(jax.random.PRNGKey(10 + i), hkv, g, d, t, kcl, kp, window) for i in range(layers)]
        q = data[0][0]
        kks, vvs = [x[4] for x in data], [x[5] for x in data]
        bits = [ps.scores_bits(q, x[1], x[2], scale) for x in data]
        keeps = [ps.reference(q, b_, x[2], x[3], x[4], x[5], budget, scale, kp)[2] for b_, x in zip(bits, data)]
        nkept = int(jnp.max(jnp.sum(keeps[0], axis=1)))
        bsz = -(-nkept // 64) * 64
        idxs = [p2.kept_index(k_, bsz) for k_ in keeps]
        ro = ps.reference(q, bits[0], data[0][2], data[0][3], kks[0], vvs[0], budget, scale, kp)[0]
        t_empty = ps.timeit(jax.jit(lambda q, *a: q.astype(F32) + 1.0), (q,))
        per = lambda tt: (tt - t_empty) / layers * 1e6
        dd = per(ps.timeit(ps.chain_layers(ps.dense_layer(scale)), (q, kks, vvs)))
        mb = hkv * nkept * d * 2 * 2 / 1e6
        say(f"\n### {label}: dense (XLA) {dd:.1f} µs a layer; kept rows a head ≤ {nkept} ({mb:.1f} MB of keys and values)")
        say("| variant | splits | warps | stages | µs a layer | GB/s | max err vs reference | vs base |")
        say("|---|---:|---:|---:|---:|---:|---:|---:|")
        base = jax.jit(lambda q, ix, k, v: paged_call("base", q, ix, k, v, 32, r, scale)[0])(q, idxs[0], kks[0], vvs[0])
        for ns in (32, 64) if t <= 32768 else (32,):
            for v in VARIANTS:
                for nw, st in ((4, 2), (4, 1), (8, 2)) if v != "base" else ((4, 2),):
                    try:
                        fn = lambda qq, ix, k, vv_: paged_call(v, qq, ix, k, vv_, ns, r, scale, nw, st)[0]
                        out = jax.jit(fn)(q, idxs[0], kks[0], vvs[0])
                        err = float(jnp.max(jnp.abs(out - ro)))
                        eb = float(jnp.max(jnp.abs(out - base)))
                        tt = per(ps.timeit(ps.chain_layers(fn), (q, idxs, kks, vvs)))
                        say(f"| {v} | {ns} | {nw} | {st} | {tt:.1f} | {mb / tt * 1e3:.0f} | {err:.1e} | {eb:.1e} |")
                    except Exception as e:  # noqa: BLE001
                        say(f"| {v} | {ns} | {nw} | {st} | failed: {str(e).splitlines()[0][:150]} |")


if __name__ == "__main__":
    main()
