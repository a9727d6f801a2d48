#!/usr/bin/env bash
# Squeezed Attention inside the engine on real shapes (random weights), issue 4's speed setting: a 32K
# fixed context (and 128K for LLaMA-3-8B), fixed budget 10%, a 512-token user input, then 32 decode
# steps, dense, squeezed and squeezed with the hierarchical index, from the same prefilled context
# (bench -squeeze-budget -squeeze-hierarchical).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-hierarchical -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 40"
timeout 200 $B -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" -lens 32768 2>>"$OUT/sq7b.err" | grep "^|"
[ -n "${SKIP8B32:-}" ] || timeout 200 $B -model gpu-run/models/llama-3-8b -label "LLaMA-3-8B shape" -lens 32768 2>>"$OUT/sq8b.err" | grep "^|"
timeout 300 $B -model gpu-run/models/llama-3-8b -label "LLaMA-3-8B shape" -lens 130000 2>>"$OUT/sq8b128.err" | grep "^|"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
