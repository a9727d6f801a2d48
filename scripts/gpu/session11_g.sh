#!/usr/bin/env bash
# Session 11, seventh call: round 13 (scripts/gpu/pallas_decode.py: a decode step's cluster scores fused into the
# selection's kernel A; checked and timed in jax, nothing exported), then the engine's 7B 32K row once more (the
# squeezed decode step's spread between processes).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
timeout 200 python3 scripts/gpu/pallas_decode.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
grep -v "^\s*$" "$OUT/pallas.md" | tee -a "$R"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
. scripts/gpu/xla-env.sh >/dev/null 2>&1
echo "== 7B 32K: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a "$R"
timeout 110 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 \
  -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
tail -2 "$OUT/b7.err" | cut -c1-300
exit 0
