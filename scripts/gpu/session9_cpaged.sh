#!/usr/bin/env bash
# Session 9, second call: the cluster-run kernel (pallas_squeeze3.py: checks, timing against the paged kernel,
# configs exported to $OUT/kernels.tgz), then the attention benchmark's decode with command buffers (as the engine
# runs decode steps) and SearchAuto's sort above 2048 clusters.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
EXPORT=1 OUT=$OUT timeout ${T0:-240} python3 scripts/gpu/pallas_squeeze3.py > "$OUT/pallas3.log" 2>&1
echo "pallas3 rc=$?" | tee -a "$R"
(cd "$OUT" && tar czf kernels.tgz kernels 2>/dev/null && rm -rf kernels)
cd llama
timeout ${T1:-300} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.phases decode \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.variants ${V:-empty,dense,sq-engine,sq-engine-paged,lookup-new,lookup-scores,lookup-lo} \
  -attnbench.cluster=false -attnbench.check=false -attnbench.out "$OUT/attnbench.md" > "$OUT/attnbench.log" 2>&1
echo "attnbench rc=$?" | tee -a "$R"
grep -E "ms per call|context" "$OUT/attnbench.log" | tee -a "$R"
exit 0
