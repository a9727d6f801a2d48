#!/usr/bin/env bash
# Session 19, call 3: the build with round 31's kernel P by row blocks embedded (over Z's launch, splits included).
# TestKernelProbes on the device (every probe passes with the embedded configs); the attention benchmark's input
# phase by the slope, 512 tokens: the build as committed, then with round 30's Z with a fixed reference
# (gpu-run/zref through SQLLM_KERNEL_DIR); a 64-token input (where Z splits the centroids): the build, then
# SQLLM_SCORES_P=blocks (kernel P by centroid blocks, the former default there). Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
(cd llama && SQLLM_TEST_BACKEND=xla timeout 90 ../bin/llama.test -test.run '^TestKernelProbes$' -test.v > "$OUT/tests.log" 2>&1)
echo "tests rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|probe says" "$OUT/tests.log" | cut -c1-260 | head -8 | tee -a "$R"
input_ab "512 tokens: this build" 160
if [ $((SECONDS-T0)) -lt 300 ]; then input_ab "512 tokens: Z with a reference (SQLLM_KERNEL_DIR=gpu-run/zref)" 160 SQLLM_KERNEL_DIR="$PWD/gpu-run/zref"; fi
if [ $((SECONDS-T0)) -lt 400 ]; then AB_ARGS="-attnbench.input 64" input_ab "64 tokens: this build" 90; fi
if [ $((SECONDS-T0)) -lt 470 ]; then AB_ARGS="-attnbench.input 64" input_ab "64 tokens: P by centroid blocks (SQLLM_SCORES_P=blocks)" 90 SQLLM_SCORES_P=blocks; fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
