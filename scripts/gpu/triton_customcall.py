"""Writes a real Triton custom call's backend_config for backend/xla's TestTritonCustomCallXLA.

A tiny jax Pallas (Triton) kernel with two outputs (x+y and x*y over f32[1024], 4 programs of 256) is lowered
to StableHLO; its `stablehlo.custom_call @__gpu$xla.gpu.triton` line goes to $OUT/jax_custom_call.txt and its
backend_config dictionary, verbatim, to $OUT/triton_backend_config.txt. The Go test emits the same call
through graph.BackendCustomCall and runs it on the PJRT CUDA plugin.

Here: CGO_ENABLED=1 GOEXPERIMENT=simd go test -c -o gpu-run/cc/xla.test ./backend/xla (carry gpu-run/cc); on the
GPU machine: python3 scripts/gpu/triton_customcall.py &&
  SQLLM_TRITON_BACKEND_CONFIG=$OUT/triton_backend_config.txt ./gpu-run/cc/xla.test -test.run TritonCustomCallXLA -test.v
(passed on an H200 with jax 0.11.2, 2026-11-27).
"""
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # older layout
    from jax.experimental.pallas import gpu as plgpu

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
N, BLOCK = 1024, 256


def compiler_params(num_warps, num_stages):
    for name in ("CompilerParams", "TritonCompilerParams"):
        cls = getattr(plgpu, name, None)
        if cls is not None:
            return cls(num_warps=num_warps, num_stages=num_stages)
    return dict(triton=dict(num_warps=num_warps, num_stages=num_stages))


def kernel(x_ref, y_ref, s_ref, p_ref):
    x, y = x_ref[...], y_ref[...]
    s_ref[...] = x + y
    p_ref[...] = x * y


def sum_prod(x, y):
    spec = pl.BlockSpec((BLOCK,), lambda i: (i,))
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((N,), jnp.float32), jax.ShapeDtypeStruct((N,), jnp.float32)),
        grid=(N // BLOCK,),
        in_specs=[spec, spec],
        out_specs=(spec, spec),
        compiler_params=compiler_params(4, 2),
        name="sum_prod",
    )(x, y)


def dict_after(text, key):
    """The balanced {...} after `key` in text, skipping braces inside MLIR strings."""
    i = text.index(key) + len(key)
    i = text.index("{", i)
    depth, in_str, j = 0, False, i
    while True:
        c = text[j]
        if in_str:
            if c == "\\":
                j += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j + 1]
        j += 1


def main():
    print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
    x = jnp.arange(N, dtype=jnp.float32)
    y = jnp.full((N,), 2.0, jnp.float32)
    s, p = jax.jit(sum_prod)(x, y)
    assert bool(jnp.all(s == x + y)) and bool(jnp.all(p == x * y)), "jax's own run is wrong"
    txt = jax.jit(sum_prod).lower(x, y).as_text()
    with open(os.path.join(OUT, "jax_sum_prod.mlir"), "w") as f:
        f.write(txt)
    line = next(l for l in txt.splitlines() if "xla.gpu.triton" in l)
    with open(os.path.join(OUT, "jax_custom_call.txt"), "w") as f:
        f.write(line.strip() + "\n")
    cfg = dict_after(line, "backend_config = ")
    with open(os.path.join(OUT, "triton_backend_config.txt"), "w") as f:
        f.write(cfg)
    print("jax:", line.strip()[:400], "...", flush=True)
    print("backend_config:", len(cfg), "chars", flush=True)


if __name__ == "__main__":
    main()
