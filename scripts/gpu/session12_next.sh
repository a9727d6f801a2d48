#!/usr/bin/env bash
# Prepared in session 11 for the next GPU call (NOT RUN): what is still open on the GPU.
# 1. LLaMA-2-7B at 128K (130,000 tokens) in the engine ran out of memory on an H200 (150.8 GB) in session 10 (default
#    options: allocating 768 MiB) and in session 11 (session11_f.sh, SQLLM_XLA_OPTIONS=memory_fraction=0.92: allocating
#    960 MiB). Diagnosis (session 11, from those sizes, not run): a prefill chunk's writeKV (llama/runner.go) allocates
#    the context's next, larger cache and copies the old one into it, so the prefill's peak holds two caches. 960 MiB is
#    one layer's K at capacity 122,880 rows (32 KV heads x 128 x 2 bytes a row): the 15th of 16 writes of 8,192-token
#    chunks (0.524 MB of K and V a row over the 32 layers), while the old cache of 114,688 rows is alive: 60.1 + 64.4 GB
#    of caches + 4.3 GB of the chunk's keys and values + 13.5 GB of weights = 142.3 GB > 0.92 x 150.8 GB = 138.7 (the
#    write before needed 133.7). Session 10's 768 MiB is the same at 98,304 rows against the default 0.75: 47.2 + 51.5
#    + 4.3 + 13.5 = 116.5 GB > 113.1 (the write before: 107.9). So memory_fraction does cap the allocator, and 130,000
#    tokens need 2 x 68.2 + 17.8 = 154 GB at the peak: more than the card. Prediction to check here: with
#    memory_fraction=0.92, 100,000 tokens fit (about 127 GB at the peak) and 120,000 do not (about 144).
#    The fix (not made) is an in-place prefill: the context's cache sized once for the whole fixed context and each
#    chunk written into it. It needs the write executable compiled with input/output aliasing (StableHLO's
#    tf.aliasing_output / jax.buffer_donor argument attributes: go-xla's StableHLO builder has InputWithAttributes, but
#    its backend's Parameter passes none and GoMLX cannot ask for them: a patch to both); donating at run time alone
#    (graph.DonateTensorBuffer) does not make XLA write in place. Then measure whether the
#    steps' fused attention over the larger capacity costs anything (cuDNN is given the valid length).
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
for n in 100000 120000; do
  echo "== 7B $n tokens, memory_fraction=0.92" | tee -a "$R"
  SQLLM_XLA_OPTIONS=memory_fraction=0.92 timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens $n \
    2>>"$OUT/b7_$n.err" | grep "^| LLaMA" | tee -a "$R"
done
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
