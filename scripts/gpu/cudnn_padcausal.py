"""Session 20: can a user input's own tokens join the kept rows' cuDNN call?

Session 13 found XLA's CAUSAL mask aligned top-left when the queries are fewer than the keys. This checks
PADDING_CAUSAL (causal with per-batch sequence lengths, what go-xla emits for Causal with QuerySeqLen and
KeyValueSeqLen): if its diagonal is aligned bottom-right at each batch entry's actual lengths, a KV head's kept
rows followed by the input's own n tokens (at that head's own offset, its kept count) need one call with
kv_seqlen = kept + n: query i then sees every kept row and the own tokens up to i. That removes the own tokens'
cuDNN call (its memsets) and the merge.

1. Semantics: PADDING_CAUSAL with ragged kv_seqlen against three references (top-left; bottom-right at the
   actual lengths; bottom-right at the padded lengths).
2. Speed at the LLaMA-2-7B shape (32 KV heads, D 128, 512 tokens, 10% of a 32K / 128K context kept, ragged
   counts): the engine's path (gather, cuDNN PADDING over the kept rows, cuDNN CAUSAL over the own tokens, the
   log-sum-exp merge) against the joined path (one gather that also places the own rows, one PADDING_CAUSAL call).
Run on the GPU machine: python3 scripts/gpu/cudnn_padcausal.py (appends to $OUT/cudnn.md).
"""
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cudnn_paged import BF16, F32, I32, say, timeit  # noqa: E402  (its report, $OUT/cudnn.md; timeit: the median of 30)


def ref(q, k, v, scale, allowed):
    """q [B, T, 1, H], k/v [B, S, 1, H]; allowed [B, T, S] → [B, T, 1, H] f32 (rows with nothing allowed: 0)."""
    s = jnp.einsum("bth,bsh->bts", q[:, :, 0].astype(F32), k[:, :, 0].astype(F32)) * scale
    s = jnp.where(allowed, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    den = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bts,bsh->bth", p / jnp.where(den > 0, den, 1.0), v[:, :, 0].astype(F32))
    return o[:, :, None, :]


def semantics(fa):
    MT = fa.MaskType
    b, t, s, h = 4, 64, 256, 64
    kvlen = jnp.array([100, 160, 256, 64], I32)
    qlen = jnp.full((b,), t, I32)
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (b, t, 1, h), F32).astype(BF16)
    k = jax.random.normal(ks[1], (b, s, 1, h), F32).astype(BF16)
    v = jax.random.normal(ks[2], (b, s, 1, h), F32).astype(BF16)
    scale = 0.125
    got = jax.jit(lambda q, k, v: fa.dot_product_attention(q, k, v, q_seqlen=qlen, kv_seqlen=kvlen, scale=scale,
                                                           mask_type=MT.PADDING_CAUSAL))(q, k, v).astype(F32)
    i = jnp.arange(t)[None, :, None]
    j = jnp.arange(s)[None, None, :]
    inlen = j < kvlen[:, None, None]
    refs = {
        "top-left": inlen & (j <= i),
        "bottom-right at the actual lengths": inlen & (j <= i + (kvlen[:, None, None] - t)),
        "bottom-right at the padded lengths": inlen & (j <= i + (s - t)),
    }
    out = {}
    for name, allowed in refs.items():
        e = float(jnp.max(jnp.abs(got - ref(q, k, v, scale, allowed))))
        out[name] = e
    say(f"\nPADDING_CAUSAL, {t} queries over {s} keys, kv_seqlen {kvlen.tolist()}: max |cuDNN − reference|: " +
        ", ".join(f"{n} {e:.2e}" for n, e in out.items()))
    return out["bottom-right at the actual lengths"] < 2e-2


def seven_b_case(t, h=32, d=128, n=512):
    """A LLaMA-2-7B-shaped input step's operands at context t: the context's keys and values kc, vc [h, t, d], the
    input's own ko, vo [h, n, d] and queries q [h, n, d] (bfloat16), the kept slots a head (10% budget + the window,
    bucketed to 256) and the PRNG keys left for the caller (ks[5:])."""
    ks = jax.random.split(jax.random.PRNGKey(1), 8)
    kc = jax.random.normal(ks[0], (h, t, d), F32).astype(BF16)
    vc = jax.random.normal(ks[1], (h, t, d), F32).astype(BF16)
    ko = jax.random.normal(ks[2], (h, n, d), F32).astype(BF16)
    vo = jax.random.normal(ks[3], (h, n, d), F32).astype(BF16)
    q = jax.random.normal(ks[4], (h, n, d), F32).astype(BF16)
    cap = (int(0.1 * t) + 100 + 255) // 256 * 256
    return kc, vc, ko, vo, q, cap, ks[5:]


def speed(fa):
    MT = fa.MaskType
    h, d, n = 32, 128, 512
    scale = 1.0 / d**0.5
    for label, t in (("7B 32K", 32768), ("7B 128K", 131072)):
        kc, vc, ko, vo, q, cap, ks = seven_b_case(t, h, d, n)
        kept = jnp.minimum(cap, (cap * jax.random.uniform(ks[0], (h,), F32, 0.8, 1.0)).astype(I32))
        rows = jnp.sort(jax.random.randint(ks[1], (h, cap), 0, t), axis=1).astype(I32)
        qlen = jnp.full((h,), n, I32)

        def engine(q, kc, vc, ko, vo, rows, kept):
            kg = jnp.take_along_axis(kc, rows[:, :, None], axis=1)
            vg = jnp.take_along_axis(vc, rows[:, :, None], axis=1)
            o1, l1 = fa.dot_product_attention(q[:, :, None], kg[:, :, None], vg[:, :, None], q_seqlen=qlen,
                                              kv_seqlen=kept, scale=scale, mask_type=MT.PADDING, return_residual=True)
            o2, l2 = fa.dot_product_attention(q[None].transpose(0, 2, 1, 3), ko[None].transpose(0, 2, 1, 3),
                                              vo[None].transpose(0, 2, 1, 3), scale=scale, mask_type=MT.CAUSAL,
                                              return_residual=True)
            o1 = o1[:, :, 0].astype(F32)          # [H, n, D]
            l1 = l1[:, 0]                          # [H, n]
            o2 = o2[0].transpose(1, 0, 2).astype(F32)
            l2 = l2[0]
            m = jnp.maximum(l1, l2)
            w1, w2 = jnp.exp(l1 - m), jnp.exp(l2 - m)
            return (o1 * w1[..., None] + o2 * w2[..., None]) / (w1 + w2)[..., None]

        def joined(q, kc, vc, ko, vo, rows, kept):
            r = jnp.arange(cap + n, dtype=I32)[None, :]
            own = r - kept[:, None]
            is_own = own >= 0
            ctx_rows = jnp.take_along_axis(rows, jnp.minimum(r, cap - 1), axis=1)
            kg = jnp.where(is_own[..., None], jnp.take_along_axis(ko, jnp.clip(own, 0, n - 1)[..., None], axis=1),
                           jnp.take_along_axis(kc, ctx_rows[..., None], axis=1))
            vg = jnp.where(is_own[..., None], jnp.take_along_axis(vo, jnp.clip(own, 0, n - 1)[..., None], axis=1),
                           jnp.take_along_axis(vc, ctx_rows[..., None], axis=1))
            o = fa.dot_product_attention(q[:, :, None], kg[:, :, None], vg[:, :, None], q_seqlen=qlen,
                                         kv_seqlen=kept + n, scale=scale, mask_type=MT.PADDING_CAUSAL)
            return o[:, :, 0].astype(F32)

        args = (q, kc, vc, ko, vo, rows, kept)
        try:
            fe, fj = jax.jit(engine), jax.jit(joined)
            e = float(jnp.max(jnp.abs(fe(*args) - fj(*args))))
            te, tj = timeit(fe, args), timeit(fj, args)
            te2, tj2 = timeit(fe, args), timeit(fj, args)
            say(f"{label} ({cap} kept slots a head, {int(jnp.min(kept))}-{int(jnp.max(kept))} kept): engine path "
                f"{te * 1e6:.1f} / {te2 * 1e6:.1f} µs, joined {tj * 1e6:.1f} / {tj2 * 1e6:.1f} µs; max |difference| {e:.2e}")
        except Exception:  # noqa: BLE001
            say(f"{label} FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")


def main():
    from jax._src.cudnn import fused_attention_stablehlo as fa
    say(f"\n## PADDING_CAUSAL alignment and the joined own tokens: jax {jax.__version__}, {jax.devices()}")
    try:
        ok = semantics(fa)
    except Exception:  # noqa: BLE001
        say(f"semantics FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")
        return
    if ok:
        speed(fa)
    else:
        say("not bottom-right at the actual lengths: the joined path would be wrong; no timing")


if __name__ == "__main__":
    main()
