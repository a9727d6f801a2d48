#!/usr/bin/env bash
# tinycode_lcc with dense and the Squeezed Attention configs run side by side (one process each on the same GPU: the
# run is dominated by per-context clustering/calibration and XLA compilation, which use the host's cores).
# Each process stops after LCC_TIMEOUT seconds; the predictions made so far are kept (the rows are
# complete JSON lines); $OUT/lcc.tgz holds them, to be scored on the CPU machine (longbench resumes from
# them and only scores).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
# Every new shape is an XLA compilation, and a compilation with Triton GEMM autotuning took 20-60 s per
# step executable of this 8-layer model with four processes compiling at once (H100): without Triton GEMMs
# and autotuning, and with fewer shapes (one prefill chunk per context up to 8K tokens, capacities in
# multiples of 4K), the run is dominated by the items instead.
export XLA_FLAGS="${LCC_XLA_FLAGS---xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0}${XLA_FLAGS:+ $XLA_FLAGS}"
for c in ${CONFIGS:-dense sq50 sq70 sq90}; do
  mkdir -p "/tmp/lb-$c"
  ( start=$(date +%s)
    timeout ${LCC_TIMEOUT:-480} ./bin/longbench -backend xla -dtype f32 -data gpu-run/data -tasks tinycode_lcc -configs "$c" ${LB_FLAGS--max-chunk 8192 -ctx-granule 4096} \
      -out "/tmp/lb-$c" -quiet -timings >/dev/null 2>"/tmp/lb-$c/timings.err"
    echo "$c: rc=$? in $(( $(date +%s) - start ))s, $(wc -l < /tmp/lb-$c/preds/$c/tinycode_lcc.jsonl) items" ) &
done
wait
# One archive comes back (the device tool returns at most 8 files): every config's predictions and log.
tar czf "$OUT/lcc.tgz" -C /tmp $(for c in ${CONFIGS:-dense sq50 sq70 sq90}; do echo "lb-$c/preds" "lb-$c/timings.err"; done) 2>/dev/null
