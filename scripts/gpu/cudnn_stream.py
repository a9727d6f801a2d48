"""Session 20: can XLA run a user input's own-tokens cuDNN call on a second stream, beside the kept rows' path?

Call 1 of session 20 set operation_queue_id 1 in that call's backend config under
--xla_gpu_multi_streamed_windowed_einsum=true: XLA aborted (std::out_of_range). This tries XLA's explicit stream
annotation, as jax's compute_on("gpu_stream:1") emits it (a func.call with the frontend attribute
_xla_stream_annotation, wrapped asynchronously under --xla_gpu_experimental_stream_annotation=true).

At the LLaMA-2-7B shape (32 KV heads, D 128, 512 tokens, 10% of a 32K / 128K context kept): the engine's path after
the lookup (a chain of small kernels standing in for the selection, the gather, cuDNN over the kept rows, cuDNN causal
over the own tokens, the merge), with the own tokens' call on the default stream and on stream 1. Prints whether the
compiled HLO has the asynchronous call, the difference of the two results, and their times.
Run on the GPU machine: python3 scripts/gpu/cudnn_stream.py (appends to $OUT/cudnn.md).
"""
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cudnn_paged import F32, I32, say, timeit  # noqa: E402  (its report, $OUT/cudnn.md; timeit: the median of 30)
from cudnn_padcausal import seven_b_case  # noqa: E402


def main():
    from jax._src.cudnn import fused_attention_stablehlo as fa
    from jax.experimental.compute_on import compute_on
    import inspect
    MT = fa.MaskType
    try:
        say(f"compute_on{inspect.signature(compute_on)}")
        say("```\n" + inspect.getsource(compute_on)[:3000] + "\n```")
    except Exception:  # noqa: BLE001
        pass

    def on_stream(fn):
        """fn on stream 1 through compute_on, whichever of its forms this jax has."""
        params = inspect.signature(compute_on).parameters
        if "out_memory_spaces" in params:
            try:
                dev = jax.memory.Space.Device
            except AttributeError:
                from jax._src.core import MemorySpace
                dev = MemorySpace.Device
            return compute_on(compute_type="gpu_stream:1", out_memory_spaces=(dev, dev))(fn)

        def g(*a):
            with compute_on("gpu_stream:1"):
                return fn(*a)
        return g
    say(f"\n## The own tokens' cuDNN call on a second stream: jax {jax.__version__}, {jax.devices()}, "
        f"XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}")
    h, d, n = 32, 128, 512
    scale = 1.0 / d**0.5
    for label, t in (("7B 32K", 32768), ("7B 128K", 131072)):
        kc, vc, ko, vo, q, cap, ks = seven_b_case(t, h, d, n)
        sc = jax.random.normal(ks[0], (h, t // 20), F32)  # cluster scores, 5% centroids
        qlen = jnp.full((h,), n, I32)

        @jax.jit
        def own(q, ko, vo):
            o2, l2 = fa.dot_product_attention(q[None].transpose(0, 2, 1, 3), ko[None].transpose(0, 2, 1, 3),
                                              vo[None].transpose(0, 2, 1, 3), scale=scale, mask_type=MT.CAUSAL,
                                              return_residual=True)
            return o2[0].transpose(1, 0, 2).astype(F32), l2[0]

        def path(second):
            def f(q, kc, vc, ko, vo, sc):
                if second:
                    o2, l2 = on_stream(own)(q, ko, vo)
                else:
                    o2, l2 = own(q, ko, vo)
                # a stand-in selection: a few dependent small kernels over the scores, then the kept rows
                s = sc
                for _ in range(6):
                    s = jnp.cumsum(jnp.sort(s, axis=1), axis=1) * 1e-3 + sc
                rows = (jnp.argsort(s, axis=1)[:, :cap] * 20).astype(I32)
                kept = jnp.full((h,), cap - 64, I32)
                kg = jnp.take_along_axis(kc, rows[:, :, None], axis=1)
                vg = jnp.take_along_axis(vc, rows[:, :, None], axis=1)
                o1, l1 = fa.dot_product_attention(q[:, :, None], kg[:, :, None], vg[:, :, None], q_seqlen=qlen,
                                                  kv_seqlen=kept, scale=scale, mask_type=MT.PADDING, return_residual=True)
                o1, l1 = o1[:, :, 0].astype(F32), l1[:, 0]
                m = jnp.maximum(l1, l2)
                w1, w2 = jnp.exp(l1 - m), jnp.exp(l2 - m)
                return (o1 * w1[..., None] + o2 * w2[..., None]) / (w1 + w2)[..., None]
            return jax.jit(f)

        args = (q, kc, vc, ko, vo, sc)
        try:
            f0, f1 = path(False), path(True)
            txt = f1.lower(*args).compile().as_text()
            asyn = [ln.strip()[:160] for ln in txt.splitlines() if ("-start" in ln or "-done" in ln) and "=" in ln]
            say(f"{label}: compiled HLO with the annotation has {len(asyn)} start/done lines: {asyn[:3]}")
            e = float(jnp.max(jnp.abs(f0(*args) - f1(*args))))
            t0, t1 = timeit(f0, args), timeit(f1, args)
            t0b, t1b = timeit(f0, args), timeit(f1, args)
            say(f"{label}: default stream {t0 * 1e6:.1f} / {t0b * 1e6:.1f} µs, own tokens on stream 1 {t1 * 1e6:.1f} / "
                f"{t1b * 1e6:.1f} µs; max |difference| {e:.2e}")
        except Exception:  # noqa: BLE001
            say(f"{label} FAILED\n```\n{traceback.format_exc()[-2500:]}\n```")


if __name__ == "__main__":
    main()
