#!/usr/bin/env bash
# Session 17, calls 4 (SETTINGS="0,0 1,1 2,2 4,4 6,8", whose Z column was lost to the parse) and 5 (the default
# SETTINGS): the cluster-score kernels' splits (SQLLM_SCORES_SPLITS="ks,ms": kernel Z's centroid splits,
# kernel P's row splits; "0,0" the committed formula, about 528 programs each). CUPTI per-kernel times of a 512-token
# input's squeezed attention (attention benchmark, 8 chained layers, 1,000 calls, sq-engine-sel-sk alone) at the four
# shapes, one process per setting and shape: kernel Z ("kernel"), kernel P ("kernel__1") and the layer's span.
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
T0=$SECONDS
zp() { # SPLITS SHAPE CTX
  (cd llama && SQLLM_SCORES_SPLITS=$1 CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 90 ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes "$2" -attnbench.ctx "$3" \
    -attnbench.phases input -attnbench.check=false -attnbench.variants sq-engine-sel-sk -attnbench.cluster=false -attnbench.slope=false \
    -attnbench.layers 8 -attnbench.reps 100 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
  local rc=$?
  python3 scripts/gpu/cupti/units.py /tmp/t.trace 100 > /tmp/u.txt
  echo "| $2 $3 | $1 | rc=$rc | $(python3 scripts/gpu/cupti/perlayer.py /tmp/u.txt kernel kernel kernel__1 kernel__2 kernel__3) | at $((SECONDS-T0)) s" | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
}
for s in ${SETTINGS:-0,0 1,1 2,2 1,2 0,0 1,1}; do
  for sc in "7b 32768" "7b 131072" "8b 32768" "8b 131072"; do
    [ $((SECONDS-T0)) -lt 500 ] && zp $s $sc
  done
done
exit 0
