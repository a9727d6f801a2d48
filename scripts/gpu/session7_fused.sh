#!/usr/bin/env bash
# Session 7's fifth call: the remainder computed from the lookup's own probabilities (remainderFromLookup).
# bench -squeeze-budget 0.1 -squeeze-remainder on the LLaMA-2-7B shape at 32K (dense, squeezed and squeezed +
# remainder rows from one prefilled context, alone on the GPU), then tinycode_lcc sq90r on all 150 items (its
# predictions come back, to compare with the previous call's).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
timeout 260 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-remainder -squeeze-input 512 \
  -decode 32 -reps 2 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 \
  2>>"$OUT/bench.err" | grep "^| LLaMA" | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  sed 's#^bash scripts/gpu/unpack.sh#:#' scripts/gpu/lcc_squeezed.sh > /tmp/lcc_noup.sh
  CONFIGS=sq90r LCC_TIMEOUT=200 bash /tmp/lcc_noup.sh ) 2>&1 | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
