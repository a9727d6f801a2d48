#!/usr/bin/env bash
# Session 14: (1) the every-key-kept check of the attention benchmark with the seg variant (session14_e.sh's check
# list lacked it). (2) The engine's squeezed decode, the dynamic segment in XLA's dense attention
# (SQLLM_SQUEEZE_PAGEDSEG=0) against in the paged kernel's launch (=1), LLaMA-2-7B and LLaMA-3-8B shapes at 32K, one
# process each, dense in each. Build first (here): bash scripts/gpu/build.sh.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
(cd llama && timeout 120 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 4096 -attnbench.phases decode -attnbench.check=true \
  -attnbench.variants empty,dense,sq-engine-paged-sel-seg -attnbench.cluster=false -attnbench.out "$OUT/check.md" > "$OUT/check.log" 2>&1
  echo "check rc=$?" | tee -a "$R")
grep -E "seg|sq-engine-paged-sel vs" "$OUT/check.md" | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -cache-dir -"
for m in "llama-2-7b LLaMA-2-7B" "llama-3-8b LLaMA-3-8B"; do
  set -- $m
  for s in 0 1; do
    echo "== $2 32K, SQLLM_SQUEEZE_PAGEDSEG=$s" | tee -a "$R"
    SQLLM_SQUEEZE_PAGEDSEG=$s timeout 150 $B -model gpu-run/models/$1 -label $2 -lens 32768 2>>"$OUT/bench.err" | grep "^| LLaMA" | tee -a "$R"
  done
done
exit 0
