"""Round 23 (session 16): the paged kernel's tile rows, warps and body, measured where it runs (the engine).

Until now the paged kernels' 32-row tiles were chosen in jax's timings (session 8), and the one-row body (LLaMA-2-7B:
one query row a KV head) stayed make_paged_dyn's because pf2 was no faster there in jax's timings (session 12), which
have since misranked variants several times. This round only checks and exports: for each SET below it writes the
configs of the paged kernel with the dynamic segment (pagedseg, make_paged_seg in pallas_finish.py) and of the paged
kernel alone (paged, pallas_paged.make_kernel) for G = 1 and 4 rows a KV head, head dims 64 and 128 (what the engine's
probes and the LLaMA-2-7B / LLaMA-3-8B decode run), to $OUT/sets/{SET}/kernels/{pagedseg,paged}_g{G}_d{D}.cfg.gz.
A build whose squeeze package reads SQLLM_TEST_KERNEL_DIR (configs there first) and SQLLM_TEST_PAGED_ROWS (the tile
rows R) then runs them in the attention benchmark (scripts/gpu/session16_a.sh).

Each set's kernels are checked first against the float32 reference of pallas_finish.py (two cases: a list laid out for
their R, dynamic rows not a multiple of R, masks that differ by row, an empty head, logits ×40); a set with an error above
1e-2 is not exported.
Run on the GPU machine: python3 scripts/gpu/pallas_tiles.py (appends to $OUT/pallas.md).

Result (session 16, calls 1-2, CUPTI per call of the paged kernel with the input tokens, µs): LLaMA-2-7B 32K embedded
21.5, g1pf2 24.3, g1pf2s2 24.6, r64w4 24.0, r64w8 21.7, r64pf2w8 29.4; LLaMA-3-8B 32K embedded 17.7 (session 15),
r64w4 29.6, r64w8 20.3, g4w8 31.1. Nothing embedded: the embedded kernels stay.
"""
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402
import pallas_paged as pp  # noqa: E402
import pallas_finish as pf  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

F32, I32 = jnp.float32, jnp.int32
say = ps.say

# SET: (R, {G: (body, warps, stages)}); G absent: the embedded kernel's (base, 4 warps, 2 stages for one row; pf2, 4, 1
# above), which only R = 32 sets may fall back to.
SETS = {
    "g1pf2": (32, {1: ("pf2", 4, 1)}),
    "g1pf2s2": (32, {1: ("pf2", 4, 2)}),
    "r64w4": (64, {1: ("base", 4, 2), 4: ("pf2", 4, 1)}),
    "r64w8": (64, {1: ("base", 8, 2), 4: ("pf2", 8, 1)}),
    "r64pf2w8": (64, {1: ("pf2", 8, 1), 4: ("pf2", 8, 1)}),
    "g4w8": (32, {4: ("pf2", 8, 1)}),
}


def lower_seg(variant, g, d, r, nw, st, hq=8, n=1 << 20, p=320, nd=1 << 16, tm=1 << 14):
    kern = pf.make_paged_seg(variant, g, d, r, n, p, hq, nd, tm, nw, st)
    args = (jax.ShapeDtypeStruct((hq, g, d), jnp.bfloat16), jax.ShapeDtypeStruct((p * 256,), I32),
            jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((nd, d), jnp.bfloat16), jax.ShapeDtypeStruct((nd, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((tm,), I32), jax.ShapeDtypeStruct((6,), I32), jax.ShapeDtypeStruct((1,), F32))
    return p2.extract_config(jax.jit(kern).lower(*args).as_text())


def check_set(r, variant, g, d, nw, st):
    """Worst error of the seg kernel (merged by XLA) and of the paged kernel alone against the references."""
    worst = 0.0
    for t, dyn_t, valid, ns, b, nsd, big in ((4096, 1024, 1000, 28, 3456, 8, 40.0), (2000, 77, 77, 8, 250, 1, 1.0)):
        q, k, v, dk, dv, mask, _, _, _, scale = pf.check_data(g, d, t, dyn_t, valid, ns, b, big)
        idx_hb, gidx, iters = pf.make_list(q.shape[0], t, b, ns, r=r, empty_head=True)
        o, lse = jax.jit(lambda *a: pf.seg_raw(*a, ns, iters, nsd, scale, r, variant, st, nw))(q, gidx, k, v, dk, dv, mask)
        out, ol = pf.xla_merge2(o, lse, q.shape[0], ns, nsd)
        e1, e2, agree = pf.errors(out, ol, *pf.reference(q, idx_hb, k, v, dk, dv, mask, scale))
        hq = q.shape[0]
        kern = pp.make_kernel(variant, g, d, r, hq * t, hq * ns, hq, jnp.bfloat16, nw, st)
        po, pl_ = kern(q, gidx, k.reshape(hq * t, d), v.reshape(hq * t, d), jnp.array([iters, ns], I32), jnp.array([scale], F32))
        po, pl_ = ps.merge_splits(po.reshape(hq, ns, g, d), pl_.reshape(hq, ns, g))
        none = jnp.zeros((g, 0), bool)
        e3, e4, agree2 = pf.errors(po, pl_, *pf.reference(q, idx_hb, k, v, dk[:, :0], dv[:, :0], none, scale))
        say(f"check R{r} {variant} w{nw} s{st} G{g} D{d} T{t} dyn {dyn_t} NS {ns} B {b}: seg out {e1:.2e} lse {e2:.2e} "
            f"agree {agree}; paged out {e3:.2e} lse {e4:.2e} agree {agree2}")
        worst = max(worst, e1, e2, e3, e4, 0.0 if agree and agree2 else 1.0)
    return worst


def write(path, cfg):
    with open(path, "wb") as f:
        f.write(gzip.compress(cfg.encode(), 9, mtime=0))


def main():
    say(f"\n## round 23 (the paged kernel's tile rows, warps and body): jax {jax.__version__}, {jax.devices()}")
    only = os.environ.get("SETS")
    for name, (r, per_g) in SETS.items():
        if only and name not in only.split(","):
            continue
        outdir = os.path.join(ps.OUT, "sets", name, "kernels")
        os.makedirs(outdir, exist_ok=True)
        gs = (1, 4) if r != 32 else tuple(per_g)
        ok = True
        for g in gs:
            if g in per_g:
                variant, nw, st = per_g[g]
            else:
                (variant, st), nw = pf.seg_variant(g), 4
            for d in (64, 128):
                try:
                    w = check_set(r, variant, g, d, nw, st)
                except Exception as e:  # noqa: BLE001
                    say(f"{name} G{g} D{d}: failed: {str(e)[:300]}")
                    ok = False
                    continue
                if w > 1e-2:
                    say(f"{name} G{g} D{d}: worst {w:.2e}, not exported")
                    ok = False
                    continue
                write(os.path.join(outdir, f"pagedseg_g{g}_d{d}.cfg.gz"), lower_seg(variant, g, d, r, nw, st))
                write(os.path.join(outdir, f"paged_g{g}_d{d}.cfg.gz"), pp.lower_cfg(variant, g, d, r, 1 << 20, 64, 8, nw, st))
        say(f"set {name}: R {r}, {per_g}: {'exported' if ok else 'INCOMPLETE'} ({sorted(os.listdir(outdir))})")


if __name__ == "__main__":
    main()
