#!/usr/bin/env bash
# Session 11, first call: (1) round 10, a user input's cluster scores in two Pallas kernels (scripts/gpu/pallas_scores.py:
# checks against the engine's XLA formulation, timings at the 7B / 8B shapes, configs exported); (2) the squeezed
# decode step stage by stage in the attention benchmark (new part-* variants: the paged kernel over a fixed list, the
# input tokens' part, both merged, beside the lookup's stages and the whole step, dense in the same run); (3) the
# 512-token input's lookup against its whole step (7B shape).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
EXPORT=1 timeout 200 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
grep -v "^\s*$" "$OUT/pallas.md" | tail -40 >> "$R"
(cd "$OUT" && tar czf kernels.tgz kernels 2>/dev/null)
. scripts/gpu/xla-env.sh >/dev/null 2>&1
cd llama
timeout 230 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
  -attnbench.variants empty,dense,sq-engine-paged-sel,sq-engine-sel,lookup-scores,lookup-sel,part-paged,part-dyn,part-paged-dyn \
  -attnbench.cluster=false -attnbench.out "$OUT/decode.md" > "$OUT/decode.log" 2>&1
echo "decode rc=$?" | tee -a "$R"
grep -E "^\| LLaMA" "$OUT/decode.md" | tee -a "$R"
timeout 140 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=false \
  -attnbench.variants empty,dense-fused,sq-engine-sel,lookup-scores,lookup-sel -attnbench.cluster=false \
  -attnbench.out "$OUT/input.md" > "$OUT/input.log" 2>&1
echo "input rc=$?" | tee -a "$R"
grep -E "^\| LLaMA" "$OUT/input.md" | tee -a "$R"
for f in "$OUT"/*.log; do grep -iE "panic|failed|error" "$f" | head -5; done | tee -a "$R"
exit 0
