"""Session 13: can cuDNN's flash attention (through XLA's custom call, as the engine calls it) read a user input's
kept fixed-context rows in place, through a page table, instead of after XLA's gather? And does XLA's causal mask
align bottom-right when the query is shorter than the keys (then the input's own tokens could join the kept rows'
call)? Probed with jax's cuDNN attention (jax._src.cudnn.fused_attention_stablehlo), whose custom call is the one
go-xla emits.

1. The API: the signature and the paged-attention checks (printed), and the lowered custom call of a paged case
   (operand order, backend config) for go-xla.
2. Correctness: paged (block sizes 1, 16, 64) against the gathered rows' attention.
3. Speed at the LLaMA-2-7B shape (32 KV heads, D 128, a 512-token input, 10% of a 128K / 32K context kept: one
   batch entry per KV head as squeeze.SparseAttentionFused does): XLA gather + cuDNN (the engine's part-kept) against
   cuDNN paged with block size 1 (the kept row list as its page table) and, for reference, larger blocks.
4. Causal alignment: CAUSAL with 512 queries over 512 + B keys against both references.
Run on the GPU machine: python3 scripts/gpu/cudnn_paged.py (appends to $OUT/cudnn.md).
"""
import inspect
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pallas_squeeze import timeit  # noqa: E402  (the median of 30 timed calls after a warm-up)

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
REPORT = open(os.path.join(OUT, "cudnn.md"), "a")
BF16, F32, I32 = jnp.bfloat16, jnp.float32, jnp.int32


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    REPORT.write(s + "\n")
    REPORT.flush()


def ref_attention(q, k, v, scale, mask=None):
    """q [B, T, N, H], k/v [B, S, N, H] (BTNH) → [B, T, N, H] in float32."""
    s = jnp.einsum("btnh,bsnh->bnts", q.astype(F32), k.astype(F32)) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bnts,bsnh->btnh", p, v.astype(F32))


def paged_fwd(fa, q, k, v, qlen, klen, pt, scale, mask_type):
    """jax 0.11.2's public dot_product_attention takes no page tables, but its forward primitive does (the lowering
    appends page_table_k / page_table_v after the sequence lengths and sets is_paged_attention): call the private
    forward with the public function's conventions (absent operands as empty arrays)."""
    fwd = fa._dot_product_attention_fwd
    empty_f = jnp.zeros(0, dtype=q.dtype)
    empty_i = jnp.zeros(0, dtype=I32)
    vals = dict(query=q, key=k, value=v, bias=empty_f, q_seqlen=qlen, kv_seqlen=klen, q_offsets=empty_i,
                kv_offsets=empty_i, page_table_k=pt, page_table_v=pt, scale=scale, seed=42, dropout_rate=0.0,
                variadic_args=(False, False), mask_type=mask_type, layout=fa.AttentionLayout.BTNH.value,
                sliding_window_length=None, cudnn_version=fa.check_cudnn_version(), return_residual=False)
    params = inspect.signature(fwd).parameters
    return fwd(*[vals[n] for n in params])


def main():
    from jax._src.cudnn import fused_attention_stablehlo as fa
    say(f"\n## cuDNN paged attention and causal alignment: jax {jax.__version__}, {jax.devices()}")
    sig = inspect.signature(fa.dot_product_attention)
    say(f"dot_product_attention{sig}")
    for name in ("check_is_paged_attention", "check_is_flash_attention", "_check_paged"):
        fn = getattr(fa, name, None)
        if fn is not None:
            src = inspect.getsource(fn)
            say(f"```\n{src[:2500]}\n```")
    try:
        src = inspect.getsource(fa.dot_product_attention)
        say(f"dot_product_attention source, its end:\n```\n{src[-3500:]}\n```")
        say(f"_dot_product_attention_fwd{inspect.signature(fa._dot_product_attention_fwd)}")
        if hasattr(fa, "_dot_product_attention"):
            say(f"_dot_product_attention{inspect.signature(fa._dot_product_attention)}")
    except Exception:  # noqa: BLE001
        say(traceback.format_exc()[-800:])
    MT = fa.MaskType
    say(f"MaskType members: {[m.name for m in MT]}")

    h, d, m = 32, 128, 512
    scale = 1.0 / d**0.5
    for label, t in (("7B 128K", 131072), ("7B 32K", 32768)):
        kept = int(0.1 * t) // 64 * 64
        key = jax.random.PRNGKey(1)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        # the fixed context's KV as the engine keeps it: [H, T, D]
        kc = jax.random.normal(k1, (h, t, d), F32).astype(BF16)
        vc = jax.random.normal(k2, (h, t, d), F32).astype(BF16)
        q = (jax.random.normal(k3, (h, m, d), F32)).astype(BF16)
        rows = jnp.sort(jax.random.permutation(k4, t)[:kept])  # one list for every head (enough for timing)
        rows_h = jnp.broadcast_to(rows, (h, kept))
        kvlen = jnp.full((h,), kept, I32)
        qlen = jnp.full((h,), m, I32)

        def gathered(q, kc, vc, rows_h):
            kg = jnp.take_along_axis(kc, rows_h[:, :, None], axis=1)  # [H, B, D]
            vg = jnp.take_along_axis(vc, rows_h[:, :, None], axis=1)
            # batch = KV head, one head: BTNH [H, T, 1, D]
            return fa.dot_product_attention(q[:, :, None, :], kg[:, :, None, :], vg[:, :, None, :], q_seqlen=qlen,
                                            kv_seqlen=kvlen, scale=scale, mask_type=MT.PADDING)

        try:
            og = jax.jit(gathered)(q, kc, vc, rows_h)
            tg = timeit(jax.jit(gathered), (q, kc, vc, rows_h))
            kg0 = jnp.take_along_axis(kc, rows_h[:, :, None], axis=1)
            vg0 = jnp.take_along_axis(vc, rows_h[:, :, None], axis=1)
            alone = jax.jit(lambda q, kg, vg: fa.dot_product_attention(q[:, :, None, :], kg[:, :, None, :], vg[:, :, None, :],
                                                                       q_seqlen=qlen, kv_seqlen=kvlen, scale=scale,
                                                                       mask_type=MT.PADDING))
            ta = timeit(alone, (q, kg0, vg0))
            say(f"\n### {label}: {kept} kept rows a head; gather + cuDNN {tg * 1e6:.1f} µs, cuDNN alone over the gathered rows {ta * 1e6:.1f} µs")
        except Exception:  # noqa: BLE001
            say(f"gathered FAILED\n```\n{traceback.format_exc()[-2000:]}\n```")
            continue
        for bs, full in ((1, False), (1, True), (16, True), (64, True)):
            # full=False: a table of the kept blocks only, the K/V pool larger than batch × table (jax's
            # check_layout refuses it, so it is bypassed); full=True: a table of every block of the head's
            # context, the kept ones first, kv_seqlen = the kept rows (the pool is exactly batch × table).
            try:
                nb = t // bs
                kp = kc.reshape(h * nb, bs, 1, d)
                vp = vc.reshape(h * nb, bs, 1, d)
                if bs == 1:
                    kept_pages = rows_h
                else:
                    nk = kept // bs
                    blocks = jnp.sort(jax.random.permutation(jax.random.PRNGKey(bs), nb)[:nk])
                    kept_pages = jnp.broadcast_to(blocks, (h, nk))
                npg = kept_pages.shape[1]
                if full:
                    kept_pages = jnp.concatenate([kept_pages, jnp.zeros((h, nb - npg), kept_pages.dtype)], axis=1)
                pages = kept_pages + (jnp.arange(h, dtype=I32) * nb)[:, None]
                klen = jnp.full((h,), npg * bs, I32)
                pt = pages.astype(I32).reshape(h, 1, -1, 1)
                saved = fa.check_layout
                if not full:
                    fa.check_layout = lambda *a, **k: None

                def paged(q, kp, vp, pt, klen=klen):
                    return paged_fwd(fa, q[:, :, None, :], kp, vp, qlen, klen, pt, scale, MT.PADDING)

                try:
                    op = jax.jit(paged)(q, kp, vp, pt)
                    tp = timeit(jax.jit(paged), (q, kp, vp, pt))
                    if bs == 1 and label == "7B 32K" and full:
                        txt = jax.jit(paged).lower(q, kp, vp, pt).as_text()
                        i = txt.find("custom_call")
                        say(f"lowered paged call:\n```\n{txt[max(0, i - 600):i + 2500]}\n```")
                finally:
                    fa.check_layout = saved
                if bs == 1:
                    err = float(jnp.max(jnp.abs(op.astype(F32) - og.astype(F32))))
                    extra = f", max |paged − gathered| {err:.2e}"
                else:
                    sel = pages[:, :npg].reshape(-1)
                    kg = kp.reshape(h * nb, bs, d)[sel].reshape(h, -1, d)
                    vg = vp.reshape(h * nb, bs, d)[sel].reshape(h, -1, d)
                    want = ref_attention(q[:, :, None, :], kg[:, :, None, :], vg[:, :, None, :], scale)
                    err = float(jnp.max(jnp.abs(op.astype(F32) - want)))
                    extra = f", max |paged − reference| {err:.2e}"
                say(f"paged, block size {bs}, {'full' if full else 'kept-only'} table: {tp * 1e6:.1f} µs ({tg / tp:.2f}× the gathered){extra}")
            except Exception:  # noqa: BLE001
                say(f"paged block size {bs} full={full} FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")
    # causal alignment with fewer queries than keys
    try:
        b, s = 2, 512 + 1000
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
        q = jax.random.normal(k1, (b, m, 4, 64), F32).astype(BF16)
        k = jax.random.normal(k2, (b, s, 4, 64), F32).astype(BF16)
        v = jax.random.normal(k3, (b, s, 4, 64), F32).astype(BF16)
        got = jax.jit(lambda q, k, v: fa.dot_product_attention(q, k, v, scale=0.125, mask_type=MT.CAUSAL))(q, k, v)
        ti = jnp.arange(m)[:, None]
        sj = jnp.arange(s)[None, :]
        tl_ = ref_attention(q, k, v, 0.125, (sj <= ti)[None, None])
        br = ref_attention(q, k, v, 0.125, (sj <= ti + (s - m))[None, None])
        say(f"\nCAUSAL, {m} queries over {s} keys: max |cuDNN − top-left| {float(jnp.max(jnp.abs(got.astype(F32) - tl_))):.2e}, "
            f"max |cuDNN − bottom-right| {float(jnp.max(jnp.abs(got.astype(F32) - br))):.2e}")
        txt = jax.jit(lambda q, k, v: fa.dot_product_attention(q, k, v, scale=0.125, mask_type=MT.CAUSAL)).lower(q, k, v).as_text()
        i = txt.find("mask_type")
        say(f"its backend config around mask_type: `{txt[max(0, i - 200):i + 400]}`")
    except Exception:  # noqa: BLE001
        say(f"causal check FAILED\n```\n{traceback.format_exc()[-1500:]}\n```")


if __name__ == "__main__":
    main()
