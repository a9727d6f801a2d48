#!/usr/bin/env bash
# Prepared in session 12 (as session13_next.sh), NOT RUN. Session 13 ran its first part (the input step's stages:
# session13_b.sh). Left: the squeezed decode step's spread between processes in the engine (session 10 call 6:
# 6.15-8.81 ms a token; session 11 call 3: 6.21 and 6.89 ms with the same binary), the same command three times
# with the clocks.
# Build first (here): bash scripts/gpu/build.sh, then keep gpu-run/bin/bench.gz (the tree travels under 64 MiB).
. scripts/gpu/preamble.sh
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -cache-dir -"
for i in 1 2 3; do
  echo "== 7B 32K, run $i: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a "$R"
  timeout 160 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
done
exit 0
