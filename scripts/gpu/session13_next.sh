#!/usr/bin/env bash
# Prepared in session 12 for a next GPU call (NOT RUN). What session 11's session12_next.sh asked and session 12 did not:
# the squeezed decode step's spread between processes in the engine (session 10 call 6: 6.15-8.81 ms a token; session 11
# call 3: 6.21 and 6.89 ms with the same binary), the same command three times with the clocks. (Its other parts ran in
# session 12: LLaMA-2-7B at 130,000 tokens, calls 1-3; the attention benchmark with -attnbench.batch 1 and 10, call 4.)
# Also (first): a 512-token input's squeezed step stage by stage, with the input-phase stage variants added in session 12
# and never run on a GPU (part-kept: the kept keys' gather and cuDNN over a fixed list; part-dyn-in: the input's own
# tokens through cuDNN; part-kept-dyn: both merged), beside the whole step and its lookup.
# Build first (here): bash scripts/gpu/build.sh, then keep gpu-run/bin/bench.gz and llama.test.gz (the tree travels
# under 64 MiB).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
. scripts/gpu/xla-env.sh >/dev/null 2>&1
(cd llama && timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=false \
  -attnbench.variants empty,dense-fused,sq-engine-sel-sk,lookup-sel-sk,part-kept,part-dyn-in,part-kept-dyn \
  -attnbench.cluster=false -attnbench.out "$OUT/stages.md" > "$OUT/stages.log" 2>&1; echo "stages rc=$?" | tee -a "$R")
grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/stages.md" | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -cache-dir -"
for i in 1 2 3; do
  echo "== 7B 32K, run $i: $(nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv,noheader)" | tee -a "$R"
  timeout 160 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
done
exit 0
