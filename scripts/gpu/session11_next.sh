#!/usr/bin/env bash
# Prepared in session 10 for the next GPU call (NOT RUN): what session 10 left open on the GPU.
# 1. LLaMA-2-7B at 128K (130,000 tokens) in the engine: session 10's call 7 ran out of memory (an allocation of
#    768 MiB) with 68.7 GB of KV cache and 13.5 GB of weights on a 139 GB H200. Hypothesis: XLA's GPU allocator
#    stops at memory_fraction (0.75 by default) of the card even without preallocation; SQLLM_XLA_OPTIONS raises it.
#    Needs an H200 (an H100's 80 GB cannot hold the cache).
# 2. The squeezed decode step's spread between processes (session 10 call 6: 6.15 ms with the selection kernels,
#    7.54 and 8.81 without, dense 9.08-9.14; session 9's call 3): the same command twice more, with the clocks (the call stays under 600 s: 280 + 2 × 150).
# Build first (here): bash scripts/gpu/build.sh, then keep only gpu-run/bin/bench.gz (the tree travels under 64 MiB).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32"
echo "== 7B 128K, memory_fraction=0.92" | tee -a "$R"
SQLLM_XLA_OPTIONS=memory_fraction=0.92 timeout 280 $B -reps 2 -memory-cache-gib 100 -model gpu-run/models/llama-2-7b \
  -label LLaMA-2-7B -lens 130000 2>>"$OUT/b7l.err" | grep "^| LLaMA" | tee -a "$R"
for i in 1 2; do
  echo "== 7B 32K, run $i: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a "$R"
  timeout 150 $B -reps 3 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 \
    2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
done
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
