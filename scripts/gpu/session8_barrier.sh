#!/usr/bin/env bash
# Session 8, last call: the squeezed decode step with XLA's gathers (default) and with the paged Triton kernel
# (SQLLM_SQUEEZE_PAGED=1, with the optimization barrier on the updated dynamic cache), LLaMA-2-7B shape, 32K,
# budget 0.1, one after the other on the same card.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768"
echo "== XLA gathers (default)"; timeout 200 $B 2>"$OUT/b0.err" | grep "^| LLaMA"
echo "== paged kernel + barrier (SQLLM_SQUEEZE_PAGED=1)"; SQLLM_SQUEEZE_PAGED=1 timeout 200 $B 2>"$OUT/b1.err" | grep "^| LLaMA"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
