#!/usr/bin/env bash
# Session 9: where the squeezed lookup's time goes (issue 4), and the boundary searches against each other.
# 1. The attention benchmark, decode and a 512-token input, LLaMA-2-7B / LLaMA-3-8B shapes at 32K and 128K:
#    the lookup's stages alone (lookup-scores, lookup-lo*: scores + boundary) and whole (lookup-new/-passes/
#    -sort), and the engine's squeezed attention with the paged kernel under each search.
# 2. CUPTI: the kernels of lookup-new and lookup-sort (7B, 32K, decode), summed by name per layer, with the
#    optimised HLO of the executables (hlo.tgz). As run (session 9, H200) the trace held only the benchmark's
#    set-up kernels (341 in all), none of the timed calls': not understood; the HLO came back.
#    The attention benchmark hit its 400 s timeout during the LLaMA-3-8B 128K input phase (no Markdown report;
#    the log has every variant's line up to there).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
cd llama
V=empty,dense,dense-fused,sq-engine,sq-engine-paged,sq-engine-paged-sort,sq-engine-paged-passes,sq-new,lookup-new,lookup-passes,lookup-sort,lookup-scores,lookup-lo,lookup-lo-passes,lookup-lo-sort
timeout ${T1:-400} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes ${SHAPES:-7b,8b} -attnbench.ctx ${CTX:-32768,131072} -attnbench.variants $V \
  -attnbench.cluster=false -attnbench.out "$OUT/attnbench.md" > "$OUT/attnbench.log" 2>&1
echo "attnbench rc=$?" | tee -a "$R"
grep -E "^\| LLaMA" "$OUT/attnbench.md" | grep -vE "\| (dense-fused|sq-new|sq-engine|sq-engine-paged|sq-engine-paged-sort|sq-engine-paged-passes) vs" >> "$R"
lib=$(bash ../scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || echo "cupti build failed" | tee -a "$R"
for v in lookup-new lookup-sort; do
  XLA_FLAGS="--xla_dump_to=/tmp/dump-$v --xla_dump_hlo_as_text" CUPTI_TRACE_OUT=/tmp/$v.trace CUDA_INJECTION64_PATH=$lib \
    timeout 120 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.shapes 7b -attnbench.ctx 32768 \
    -attnbench.phases decode -attnbench.layers 4 -attnbench.reps 10 -attnbench.variants $v -attnbench.cluster=false \
    -attnbench.check=false > "$OUT/trace-$v.log" 2>&1
  # calls: reps + the warm-up call(s); see the log. Units: per layer of 4-layer calls, assuming 11 calls.
  echo "== $v kernels (per layer, 11 calls × 4 layers assumed)" | tee -a "$R"
  python3 ../scripts/gpu/cupti/bykernel.py /tmp/$v.trace 25 44 | tee -a "$R"
  (cd /tmp/dump-$v && tar czf "$OUT/hlo-$v.tgz" $(ls | grep -E 'after_optimizations\.txt$' | head -20)) 2>/dev/null
done
exit 0
