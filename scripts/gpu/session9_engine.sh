#!/usr/bin/env bash
# Session 9, third call: squeezed decode inside the engine with the paged kernel's new default (PagedAuto: one
# query row per KV head, after squeeze.ProbePaged) against XLA's gathers (SQLLM_SQUEEZE_PAGED=0), LLaMA-2-7B shape
# at 32K; the LLaMA-3-8B shape (four rows per KV head: gathers by default) at 32K. The mode column says
# "paged kernel" where the decode steps took it.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
  echo "== 7B 32K, default"; timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA"
  echo "== 7B 32K, SQLLM_SQUEEZE_PAGED=0"; SQLLM_SQUEEZE_PAGED=0 timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7g.err" | grep "^| LLaMA"
  echo "== 8B 32K, default"; timeout 150 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 32768 2>>"$OUT/b8.err" | grep "^| LLaMA"
) 2>&1 | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
