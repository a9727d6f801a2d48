#!/usr/bin/env bash
# The engine on a real shape under XLA's default flags and with Triton GEMMs and autotuning off (the
# flags that cut tinycode_lcc's compilations from 20-60 s to a few seconds), then transformers on the same
# card: prefill/decode (bench, "first run s" = the compilations plus one run) and the 8K+64 TTFT.
# SHAPE=llama-2-7b|llama-3-8b, LENS, HF=0 to skip transformers. From the repository root after prep.sh.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
SHAPE=${SHAPE:-llama-2-7b}; LENS=${LENS:-4096,16384,32768}
FAST="--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0"
B="./bin/bench -backend xla -dtype bf16 -model gpu-run/models/$SHAPE -random-weights"
for v in default fast; do
  f=""; [ $v = fast ] && f="$FAST"
  echo "== $SHAPE, XLA flags: ${f:-default}"
  XLA_FLAGS="$f" timeout 200 $B -label "$SHAPE ($v)" -lens $LENS -decode 32 -reps 2 2>>"$OUT/$SHAPE-$v.err"
  XLA_FLAGS="$f" timeout 120 $B -label "$SHAPE ($v)" -lens "" -ttft-context 8192 -ttft-question 64 -reps 3 -memory-cache-gib 8 2>>"$OUT/$SHAPE-$v.err"
done
if [ "${HF:-1}" = 1 ]; then
  echo "== transformers"
  timeout 300 python3 scripts/gpu/hf_bench.py gpu-run/models/$SHAPE $LENS 32 bf16 "$SHAPE" random 2>"$OUT/hf-$SHAPE.err"
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f"; }; done
exit 0
