#!/usr/bin/env bash
# Prepared in session 13, NOT RUN: where the squeezed steps' time goes, kernel by kernel, from Nsight Compute's duration
# metric alone (one pass a kernel: no replay, so no device-memory backups; session 13's calls 6-7 and 12 show what
# fails). The attention benchmark runs one variant at a time with 3 timed calls; scripts/gpu/ncu_summary.py takes the
# last call (the kernels' names repeat once a call) and groups its kernels by name. Build first (here):
# bash scripts/gpu/build.sh, then keep gpu-run/bin/llama.test.gz.
. scripts/gpu/preamble.sh
run() {  # label shape ctx phase variant
  echo "== $1" | tee -a "$R"
  (cd llama && timeout 130 ncu --csv --metrics gpu__time_duration.sum ../bin/llama.test -test.run '^TestAttentionBench$' \
    -test.timeout 20m -attnbench gpu -attnbench.shapes $2 -attnbench.ctx $3 -attnbench.phases $4 -attnbench.check=false \
    -attnbench.variants $5 -attnbench.cluster=false -attnbench.reps 3 -attnbench.graphs=false > "$OUT/$1.csv" 2> "$OUT/$1.err")
  echo "rc=$?" | tee -a "$R"
  python3 scripts/gpu/ncu_summary.py "$OUT/$1.csv" | tee -a "$R"
}
run decode-8b-32k 8b 32768 decode sq-engine-paged-sel
run decode-7b-32k 7b 32768 decode sq-engine-paged-sel
run decode-8b-128k 8b 131072 decode sq-engine-paged-sel
run input-7b-128k 7b 131072 input sq-engine-sel-sk
exit 0
