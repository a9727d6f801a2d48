#!/usr/bin/env bash
# Session 8: the paged Triton kernel for the squeezed decode step (squeeze.SparseAttentionPaged).
# 1. The attention-only benchmark, decode, LLaMA-2-7B and LLaMA-3-8B shapes at 32K and 128K: the engine's dense
#    attention, its squeezed attention (sq-engine: the paged kernel) and the same with XLA's gathers
#    (sq-engine-gather), and the lookup alone; every variant is first checked against dense attention with every
#    key kept (-attnbench.check).
# 2. Whole decode steps in the engine, LLaMA-2-7B shape at 32K, budget 0.1: the paged kernel (default) and
#    SQLLM_SQUEEZE_PAGED=0 (XLA's gathers), one after the other on the same card.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh
  cd llama && timeout 330 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.phases decode \
    -attnbench.variants empty,dense,sq-engine,sq-engine-gather,lookup-new -attnbench.cluster=false -attnbench.parallel 8 \
    -attnbench.out "$OUT/attnbench.md" > "$OUT/attnbench.log" 2>&1; echo "attnbench rc=$?" ) | tee -a "$R"
grep -E "^\| (LLaMA|shape)" "$OUT/attnbench.md" | head -40 | tee -a "$R"
grep -iE "check|fail|error" "$OUT/attnbench.log" | head -20 | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  echo "paged (default):"; timeout 120 $B 2>>"$OUT/bench.err" | grep "^| LLaMA"
  echo "SQLLM_SQUEEZE_PAGED=0:"; SQLLM_SQUEEZE_PAGED=0 timeout 120 $B 2>>"$OUT/bench.err" | grep "^| LLaMA" ) | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
