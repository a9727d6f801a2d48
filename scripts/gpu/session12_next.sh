#!/usr/bin/env bash
# Prepared in session 11 for the next GPU call (NOT RUN): what is still open on the GPU.
# 1. LLaMA-2-7B at 128K (130,000 tokens) in the engine ran out of memory on a 139 GB H200 in session 10 (default
#    options) and in session 11 (session11_f.sh, SQLLM_XLA_OPTIONS=memory_fraction=0.92: "Out of memory while trying
#    to allocate 960.00MiB with allocator GPU_0_bfc", surfacing when the dense row's logits were read). 68.7 GB of KV
#    cache and 13.5 GB of weights fit the card: where the rest goes is not known. Here: the largest length that runs
#    (100,000 and 115,000 tokens), the card's memory sampled every second beside it, and XLA's CUDA async allocator.
# 2. The squeezed decode step's spread between processes (session 10 call 6: 6.15-8.81 ms; session 11 call 3: 6.21
#    and 6.89 ms with the same binary): the same command twice more, with the clocks.
# 3. The attention benchmark's noise: its empty call varied 0.38-1.14 ms between runs in session 11 (±10 µs a layer on
#    every per-layer figure). -attnbench.batch 10 issues ten calls a repetition and waits once: the decode rows at 7B
#    32K with batch 1 and 10, twice each.
# Build first (here): bash scripts/gpu/build.sh, then keep gpu-run/bin/bench.gz and llama.test.gz (the tree travels
# under 64 MiB). The whole script needs about 10 minutes: split it over two calls.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 1 -memory-cache-gib 100"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 1 > "$OUT/mem.csv" 2>&1 &
SMI=$!
for n in 100000 115000; do
  echo "== 7B $n tokens" | tee -a "$R"
  timeout 120 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens $n 2>>"$OUT/b7_$n.err" | grep "^| LLaMA" | tee -a "$R"
done
echo "== 7B 130000, allocator=cuda_async" | tee -a "$R"
SQLLM_XLA_OPTIONS=allocator=cuda_async timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 130000 \
  2>>"$OUT/b7_async.err" | grep "^| LLaMA" | tee -a "$R"
kill $SMI 2>/dev/null
sort -t, -k2 -n "$OUT/mem.csv" | tail -1 | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24"
for i in 1 2; do
  echo "== 7B 32K, run $i: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a "$R"
  timeout 160 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
done
for batch in 1 10 1 10; do
  echo "== attention benchmark, decode, 7B 32K, -attnbench.batch $batch" | tee -a "$R"
  (cd llama && timeout 90 ../bin/llama.test -test.run '^TestAttentionBench$' -test.timeout 10m -attnbench gpu -attnbench.batch $batch \
    -attnbench.shapes 7b -attnbench.ctx 32768 -attnbench.phases decode -attnbench.check=false -attnbench.cluster=false \
    -attnbench.variants empty,dense,sq-engine-paged-sel,part-paged -attnbench.out "$OUT/ab$batch.md" > /dev/null 2>&1)
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab$batch.md" | tee -a "$R"
done
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
