#!/usr/bin/env bash
# Prepared in session 9 for the next GPU call (not run yet): what is still unmeasured on a GPU.
# 0. Round 7 (scripts/gpu/pallas_select.py): the selection (boundary + index list) as two Pallas kernels instead of
#    XLA's ~10 a layer; checks, timings, configs ($OUT/kernels.tgz) to embed if it is correct and fast.
# 1. The engine's user-input step with the centroid product in bfloat16 (f7b190f): bench's user-input column
#    against session 9's (7B 32K squeezed 50.8-52.0 ms) and the attention benchmark's sq-engine input rows.
# 2. The LLaMA-3-8B shape at 128K (130,000 tokens) inside the engine: clustering a few KV heads per call
#    (headBatch, a68dca6) should now fit; squeezed decode with the sort boundary (K = 6,554 > 2,048).
# 3. The attention-mass configs on all 150 tinycode_lcc items (one kept-list size for every layer since 935a219,
#    so contexts share their step executables; session 7's runs stopped at 75/46 items compiling).
# Two calls of under 10 minutes: PART=1 (items 0-1's kernels and attention benchmark), PART=2 (the engine, lcc).
set -u
PART=${PART:-1}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
[ "$PART" = 1 ] && ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; EXPORT=1 OUT=$OUT timeout 240 python3 scripts/gpu/pallas_select.py > "$OUT/pallas7.log" 2>&1
  echo "round 7 rc=$?"; grep -E "check|µs a layer|wrote|round 7" "$OUT/pallas7.log"
  (cd "$OUT" && tar czf kernels.tgz kernels 2>/dev/null && rm -rf kernels)
  cd llama && timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.phases input \
    -attnbench.shapes 7b -attnbench.ctx 32768,131072 -attnbench.variants empty,dense-fused,sq-engine,sq-new \
    -attnbench.cluster=false -attnbench.check=false 2>&1 | grep -E "context|ms per call" ) 2>&1 | tee -a "$R"
[ "$PART" = 2 ] && ( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
  echo "== 7B 32K"; timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA"
  echo "== 8B 128K"; timeout 240 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 130000 2>>"$OUT/b8l.err" | grep "^| LLaMA"
  CONFIGS="sq70m sq90m" LCC_TIMEOUT=${LCC_TIMEOUT:-300} bash scripts/gpu/lcc_squeezed.sh
) 2>&1 | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
