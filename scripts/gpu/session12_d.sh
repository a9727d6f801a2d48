#!/usr/bin/env bash
# Session 12, fourth call: the squeezed decode step (the engine's default, sq-engine-paged-sel, and sq-engine-sel)
# against dense at the four shapes, with -attnbench.batch 1 (one call a repetition, as every earlier figure) and 10
# (ten calls a repetition, one wait: the empty call's run-to-run noise, 0.38-1.14 ms in session 11, spread over ten).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
cd llama
for batch in 1 10; do
  echo "== decode, -attnbench.batch $batch" | tee -a "$R"
  timeout 170 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch $batch \
    -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
    -attnbench.variants empty,dense,sq-engine-sel,sq-engine-paged-sel -attnbench.cluster=false \
    -attnbench.out "$OUT/decode$batch.md" > "$OUT/decode$batch.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode$batch.md" | tee -a "$R"
done
exit 0
