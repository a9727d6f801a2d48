#!/usr/bin/env bash
# Session 17, call 7: (1) one layer of a 512-token input's squeezed attention in full (CUPTI with driver records,
# scripts/gpu/cupti/window.py): kernels, memsets and memcopies, their streams, the idle time before each and when the
# host launched it, at LLaMA-2-7B 128K and 32K (the committed code: kernel Z one wave); (2) the engine's input step
# and decode, 7B 32K and 8B 32K, Z one wave against the former 3 splits (SQLLM_SCORES_SPLITS=3,0), one process each.
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
win() { # LABEL SHAPE CTX
  echo "== $1" | tee -a "$R"
  (cd llama && CUPTI_TRACE_DRIVER=1 CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 90 ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes "$2" -attnbench.ctx "$3" \
    -attnbench.phases input -attnbench.check=false -attnbench.variants sq-engine-sel-sk -attnbench.cluster=false -attnbench.slope=false \
    -attnbench.layers 8 -attnbench.reps 100 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  python3 scripts/gpu/cupti/window.py /tmp/t.trace kernel 4 | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
}
win "7B 128K input, one layer" 7b 131072
win "7B 32K input, one layer" 7b 32768
engine_ab SQLLM_SCORES_SPLITS "auto 3,0" llama-2-7b "LLaMA-2-7B shape" 32768 2 100
engine_ab SQLLM_SCORES_SPLITS "auto 3,0" llama-3-8b "LLaMA-3-8B shape" 32768 2 100
exit 0
