#!/usr/bin/env bash
# Session 11, fifth call: (1) the paged kernel's splits (programs per KV head; -attnbench.splits, squeeze.SetPagedSplits)
# 32 (the default), 64, 128 for the squeezed decode step, 7B / 8B shapes at 32K and 128K, dense in each run; (2) the
# 512-token input with round 12's cluster-score configs (3 stages) against XLA's scores in the same run.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
cd llama
for ns in 32 64 128; do
  echo "== decode, splits $ns" | tee -a "$R"
  timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.splits $ns \
    -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
    -attnbench.variants empty,dense,sq-engine-sel,sq-engine-paged-sel,part-paged -attnbench.cluster=false \
    -attnbench.out "$OUT/decode$ns.md" > "$OUT/decode$ns.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "^\| LLaMA.*(decode \| [a-z]|\(dense\))" "$OUT/decode$ns.md" | tee -a "$R"
done
echo "== input, round 12 configs" | tee -a "$R"
timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=false \
  -attnbench.variants empty,dense-fused,sq-engine-sel,sq-engine-sel-sk,lookup-sel-sk -attnbench.cluster=false \
  -attnbench.out "$OUT/input.md" > "$OUT/input.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/input.md" | tee -a "$R"
grep -ihE "panic|error" "$OUT"/*.log | head -5 | cut -c1-300 | tee -a "$R"
exit 0
