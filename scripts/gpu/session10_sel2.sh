#!/usr/bin/env bash
# Session 10, second call: why the -sel input variants differed from sq-engine in call 2 (relative 0.36-0.46 in the
# last layer's output, while decode agreed): the selection check (-attnbench.selcheck: layer 0's lists, XLA's and
# the kernels', against the exact selection from the device's cluster scores) for the 7B shape, both phases; then
# decode with dense in the same run (call 2 left it out): 7B / 8B at 32K and 128K.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
cd llama
timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.selcheck \
  -attnbench.shapes 7b -attnbench.ctx 32768,131072 -attnbench.phases decode,input -attnbench.check=false \
  -attnbench.variants empty,sq-engine,sq-engine-sel,sq-new -attnbench.cluster=false > "$OUT/selcheck.log" 2>&1
echo "selcheck rc=$?" | tee -a "$R"
grep -E "context|ms per call|check|failed" "$OUT/selcheck.log" | tee -a "$R"
timeout 300 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
  -attnbench.variants empty,dense,sq-engine,sq-engine-sel,sq-engine-paged,sq-engine-paged-sel -attnbench.cluster=false \
  -attnbench.out "$OUT/decode.md" > "$OUT/decode.log" 2>&1
echo "decode rc=$?" | tee -a "$R"
grep -E "^\| LLaMA" "$OUT/decode.md" | tee -a "$R"
exit 0
