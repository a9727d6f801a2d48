#!/usr/bin/env bash
# Session 9, last call: the squeezed decode step of the LLaMA-2-7B shape at 32K with XLA's gathers
# (SQLLM_SQUEEZE_PAGED=0) and the paged kernel (=1) alternately, to see the run-to-run spread that separates
# session 8's figures (paged 7.21 against 8.13 ms) from this session's first engine call (10.64 against 9.83).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768"
for p in 0 1 0; do
  echo "== SQLLM_SQUEEZE_PAGED=$p" | tee -a "$R"
  SQLLM_SQUEEZE_PAGED=$p timeout 140 $B 2>>"$OUT/b.err" | grep "^| LLaMA" | tee -a "$R"
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader | tee -a "$R"
exit 0
