#!/usr/bin/env bash
# Prepared in session 9 for the next GPU call (not run yet): what is still unmeasured on a GPU.
# 1. The LLaMA-3-8B shape at 128K (130,000 tokens) inside the engine: clustering a few KV heads per call
#    (headBatch, a68dca6) should now fit; squeezed decode with the sort boundary (K = 6,554 > 2,048).
# 2. The attention-mass configs on all 150 tinycode_lcc items (one kept-list size for every layer since 935a219,
#    so contexts share their step executables; session 7's runs stopped at 75/46 items compiling).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
  echo "== 8B 128K"; timeout 240 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 130000 2>>"$OUT/b8l.err" | grep "^| LLaMA"
  CONFIGS="sq70m sq90m" LCC_TIMEOUT=${LCC_TIMEOUT:-300} bash scripts/gpu/lcc_squeezed.sh
) 2>&1 | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
