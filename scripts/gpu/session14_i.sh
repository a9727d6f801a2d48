#!/usr/bin/env bash
# Session 14: the engine at LLaMA-3-8B 130,000 tokens, the decode step's input tokens in the paged kernel's launch
# with the merge kernel (the defaults since session 14) against XLA's dense part (SQLLM_SQUEEZE_PAGEDSEG=0), one
# process each (as session13_e.sh).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24 -cache-dir -"
for p in auto 0; do
  echo "== 8B 130000, SQLLM_SQUEEZE_PAGEDSEG=$p" | tee -a "$R"
  if [ $p = auto ]; then unset SQLLM_SQUEEZE_PAGEDSEG; else export SQLLM_SQUEEZE_PAGEDSEG=$p; fi
  /usr/bin/time -f "wall %e s" timeout 230 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 130000 2>>"$OUT/b8.err" | grep "^| LLaMA" | tee -a "$R"
  tail -1 "$OUT/b8.err" | tee -a "$R"
done
exit 0
