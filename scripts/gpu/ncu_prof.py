"""Session 13: Nsight Compute over the squeezed step's Triton kernels, each launched once between
cudaProfilerStart/Stop (run under `ncu --profile-from-start off`): the cluster-score kernels Z and P (round 15's
embedded pair, base 2) at the LLaMA-2-7B 128K input shape, and the paged kernel, round 8's (the engine's for one
row a KV head) and round 14's pf2 (the engine's since session 13 for 2-8 rows), at the LLaMA-2-7B and LLaMA-3-8B
128K decode shapes. Which of the sections' limits (compute, memory, latency: occupancy, warp stalls) binds each.
Session 13, call 6: under --profile-from-start off with cudaProfilerStart/Stop through a ctypes-loaded libcudart the
process crashed; call 7 (NCU_RANGE=0, every kernel) spent 300 s backing up jax's preallocated device memory before
each replay. Hence: XLA_PYTHON_CLIENT_PREALLOCATE=false, a kernel-name filter and NCU_PAGED_CTX=32768 (the paged
data 4× smaller). Run: XLA_PYTHON_CLIENT_PREALLOCATE=false NCU_RANGE=0 NCU_PAGED_CTX=32768 ncu --kernel-name
regex:'...' --section ... python3 scripts/gpu/ncu_prof.py"""
import ctypes
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pallas_paged as pp  # noqa: E402
import pallas_scores as sc  # noqa: E402
import pallas_squeeze as ps  # noqa: E402
import pallas_squeeze2 as p2  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def cudart():
    import nvidia
    for base in nvidia.__path__:
        for f in glob.glob(os.path.join(base, "cuda_runtime", "lib", "libcudart.so*")):
            return ctypes.CDLL(f)
    return ctypes.CDLL("libcudart.so")


def main():
    rt = cudart() if os.environ.get("NCU_RANGE", "1") == "1" else None
    jobs = []
    # scores at 7B 128K: H 32, M 512, K 6554
    q, cent, counts = sc.case_data(jax.random.PRNGKey(0), 32, 512, 6554, 128)
    scale = 1.0 / 128**0.5
    cfg = dict(zcfg=(128, 4, 3), pcfg=(128, 4, 3), fast=True)
    fz = jax.jit(lambda q, c, n: sc.scores_call(q, c, n, scale, 64, parts="z", **cfg))
    zz = fz(q, cent, counts)
    fp = jax.jit(lambda q, c, n: sc.scores_call(q, c, n, scale, 64, parts=zz, **cfg))
    jobs += [("scores Z 7B 128K", fz, (q, cent, counts)), ("scores P 7B 128K", fp, (q, cent, counts))]
    # paged at 128K decode
    r, d, window, t = 32, 128, 100, int(os.environ.get("NCU_PAGED_CTX", "131072"))
    for label, hkv, g, variants in (("7B", 32, 1, ("base",)), ("8B", 8, 4, ("base", "pf2"))):
        kcl = t // 20
        data = ps.make_data(jax.random.PRNGKey(10), hkv, g, d, t, kcl, 1 << (kcl - 1).bit_length(), window)
        qd = data[0]
        bits = ps.scores_bits(qd, data[1], data[2], scale)
        keep = ps.reference(qd, bits, data[2], data[3], data[4], data[5], int(0.1 * (t - window)), scale,
                            1 << (kcl - 1).bit_length())[2]
        nkept = int(jnp.max(jnp.sum(keep, axis=1)))
        idx = p2.kept_index(keep, -(-nkept // 64) * 64)
        for v in variants:
            st = 1 if v == "pf2" else 2
            f = jax.jit(lambda qq, ix, k, vv, v=v, st=st: pp.paged_call(v, qq, ix, k, vv, 32, r, scale, 4, st)[0])
            jobs.append((f"paged {v} {label} {t // 1024}K", f, (qd, idx, data[4], data[5])))
    for name, f, args in jobs:
        jax.block_until_ready(f(*args))  # compile and warm
    for name, f, args in jobs:
        print(f"== {name}", flush=True)
        if rt is not None:
            rt.cudaProfilerStart()
        jax.block_until_ready(f(*args))
        if rt is not None:
            rt.cudaProfilerStop()


if __name__ == "__main__":
    main()
