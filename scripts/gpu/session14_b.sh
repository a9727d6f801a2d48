#!/usr/bin/env bash
# Session 14: the squeezed decode step kernel by kernel, with the idle gaps between kernels, from a CUPTI timeline
# (scripts/gpu/cupti/trace.c; Nsight Compute failed on the Go binaries in call 1: "Failed to prepare kernel for
# profiling", a segfault at 8B 32K). One process per variant (the timeline's end is the variant's timed calls), 8
# chained layers, 300 timed calls, command buffers as the engine; scripts/gpu/cupti/units.py averages the repeating
# unit (one layer). Build first (here): bash scripts/gpu/build.sh, keep gpu-run/bin/llama.test.gz.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
run() {  # label shape ctx phase variant [extra]
  echo "== $1" | tee -a "$R"
  (cd llama && CUPTI_TRACE_OUT=/tmp/$1.trace CUDA_INJECTION64_PATH=$lib timeout 100 ../bin/llama.test -test.run \
    '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes $2 -attnbench.ctx $3 \
    -attnbench.phases $4 -attnbench.check=false -attnbench.variants $5 -attnbench.cluster=false -attnbench.layers 8 \
    -attnbench.reps ${REPS:-300} ${6:-} > "$OUT/$1.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "^\| LLaMA" "$OUT/$1.log" | head -4 | tee -a "$R"
  python3 scripts/gpu/cupti/units.py /tmp/$1.trace 100 | tee -a "$R"
}
for v in ${VARIANTS_8B32-sq-engine-paged-sel dense part-paged sq-engine-sel}; do run 8b-32k-$v 8b 32768 decode $v; done
for v in ${VARIANTS_7B32-sq-engine-paged-sel dense}; do run 7b-32k-$v 7b 32768 decode $v; done
for v in ${VARIANTS_8B128-sq-engine-paged-sel}; do run 8b-128k-$v 8b 131072 decode $v; done
for v in ${VARIANTS_IN-sq-engine-sel-sk}; do run 7b-128k-in-$v 7b 131072 input $v "-attnbench.reps 60"; done
exit 0
