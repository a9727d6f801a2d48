#!/usr/bin/env bash
# Prepared in session 20, not yet run: Pallas round 33 (scripts/gpu/pallas_mma.py: the decode step's paged kernel with
# the dynamic segment on the tensor cores) checked, timed in jax and exported; then, if it exported, the engine with its
# configs through SQLLM_KERNEL_DIR (no Go change: same contract, same bytes): TestKernelProbes and TestSqueezedInputBF16
# on the device, and the attention benchmark's decode at the four shapes (by the slope), the embedded kernels against
# round 33's, one process each. Build first: bash scripts/gpu/build.sh. About 7-9 minutes.
. scripts/gpu/preamble.sh
T0=$SECONDS
EXPORT=1 timeout 420 python3 scripts/gpu/pallas_mma.py > "$OUT/mma.log" 2>&1
echo "round 33 rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "^check|^round 33|^\| |^exported|FAILED|rror" "$OUT/mma.log" | cut -c1-300 | head -40 | tee -a "$R"
KD="$OUT/kernels"
if [ -f "$KD/pagedseg_g4_d128.cfg" ] && [ $((SECONDS-T0)) -lt 330 ]; then
  (cd llama && SQLLM_KERNEL_DIR="$KD" SQLLM_TEST_BACKEND=xla timeout 150 ../bin/llama.test -test.run '^(TestKernelProbes|TestSqueezedInputBF16)$' -test.v > "$OUT/tests.log" 2>&1)
  echo "tests with round 33 rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "^(---|ok|FAIL|PASS)|decode step" "$OUT/tests.log" | cut -c1-200 | head -12 | tee -a "$R"
  ab_totals "decode: embedded kernels" "empty,dense,sq-engine-paged-sel-seg-look" false
  ab_totals "decode: round 33 (SQLLM_KERNEL_DIR)" "empty,dense,sq-engine-paged-sel-seg-look" false SQLLM_KERNEL_DIR="$KD"
fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
