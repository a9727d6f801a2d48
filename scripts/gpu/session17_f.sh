#!/usr/bin/env bash
# Session 17, call 8: a squeezed user input's cuDNN calls as command buffers of their own (SQLLM_DNN_GRAPHS=1: the
# executable named with backend/xla's DnnGraphMarker, xla_gpu_enable_command_buffer=CUDNN for it alone), which XLA
# does not precede with the four memsets it issues before each cuDNN attention call otherwise (call 7's timeline).
# (1) one layer's timeline at 7B 128K with it; (2) the attention benchmark's input phase by the slope, with it (the
# every-key-kept check first), without it, with it again; (3) the engine's input step at 7B 32K both ways.
# It ran on a temporary build with the SQLLM_DNN_GRAPHS switch (llama.Runner.newExec naming the squeezed input steps
# with a "dnngraph" marker, backend/xla's compileOverrides mapping it to the option), reverted after this call: the
# engine's input step was slower with it. On the committed code the switch is ignored. Build first (here):
# bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
echo "== 7B 128K input, one layer, SQLLM_DNN_GRAPHS=1" | tee -a "$R"
(cd llama && SQLLM_DNN_GRAPHS=1 CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 90 ../bin/llama.test \
  -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes 7b -attnbench.ctx 131072 \
  -attnbench.phases input -attnbench.check=false -attnbench.variants sq-engine-sel-sk -attnbench.cluster=false -attnbench.slope=false \
  -attnbench.layers 8 -attnbench.reps 100 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
echo "rc=$?" | tee -a "$R"; grep -E "FAIL|panic|rror" "$OUT/t.log" | head -3 | cut -c1-300 | tee -a "$R"
python3 scripts/gpu/cupti/window.py /tmp/t.trace kernel 4 | tee -a "$R"
rm -f /tmp/t.trace "$OUT/t.log"
run_in() { # LABEL CHECK [ENV=VALUE...]
  local label=$1 check=$2; shift 2
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 220 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
    -attnbench.check=$check -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror|  check " "$OUT/ab.log" | head -6 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}
run_in "SQLLM_DNN_GRAPHS=1 (check first)" true SQLLM_DNN_GRAPHS=1
run_in "SQLLM_DNN_GRAPHS=0" false SQLLM_DNN_GRAPHS=0
run_in "SQLLM_DNN_GRAPHS=1, again" false SQLLM_DNN_GRAPHS=1
[ $((SECONDS-T0)) -lt 440 ] && engine_ab SQLLM_DNN_GRAPHS "1 0" llama-2-7b "LLaMA-2-7B shape" 32768 2 70
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
