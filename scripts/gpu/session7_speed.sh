#!/usr/bin/env bash
# Session 7's fourth call: squeezed decode in the engine, LLaMA-2-7B shape, 32K fixed context, fixed budget 10%,
# 512-token user input, 32 decode steps: this session's bench (dense, squeezed, squeezed + remainder) and
# session 5's (bin/bench5, built from c0f9657: dense, squeezed) on the same card, one after the other.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
A="-backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
A="$A -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768"
echo "this session (223bc34+):" | tee -a "$R"
timeout 270 ./bin/bench $A -squeeze-remainder 2>>"$OUT/new.err" | grep "^| LLaMA" | tee -a "$R"
echo "session 5 (c0f9657):" | tee -a "$R"
timeout 250 ./bin/bench5 $A 2>>"$OUT/old.err" | grep "^| LLaMA" | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
