#!/usr/bin/env bash
# Session 19, call 2. Kernel P by row blocks over Z's launch with its centroid splits (Pallas round 31's
# make_scores_pr2, exported here to $OUT/kpr as scores_pr_d*.cfg; this build launches P by row blocks over H·nMB·KS
# programs, so the embedded round-28 config must not run with it: every run below names the directory through
# SQLLM_KERNEL_DIR). (1) On the device: TestKernelProbes (every probe passes), TestSqueezedInputFreshRows,
# TestSqueezedInputBF16. (2) The attention benchmark's input phase by the slope (512 tokens): with it, then with it and
# round 30's Z with a fixed reference (gpu-run/zref, exported in call 1). Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
ROUND=31 EXPORT=1 TIMINGS=0 timeout 100 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas31_stdout.txt" 2>&1
echo "pallas 31 export rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "checks|exported" "$OUT/pallas.md" | tee -a "$R"
mkdir -p "$OUT/kpr" "$OUT/kzpr" && mv "$OUT"/kernels/scores_pr_d*.cfg "$OUT/kpr/" && cp "$OUT"/kpr/*.cfg gpu-run/zref/*.cfg "$OUT/kzpr/"
ls "$OUT/kpr" "$OUT/kzpr" | tr '\n' ' ' | tee -a "$R"; echo | tee -a "$R"
(cd llama && SQLLM_KERNEL_DIR="$OUT/kpr" SQLLM_TEST_BACKEND=xla timeout 200 ../bin/llama.test -test.run '^(TestKernelProbes|TestSqueezedInputFreshRows|TestSqueezedInputBF16)$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1)
echo "tests rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|head-major step against|probe says" "$OUT/tests.log" | cut -c1-260 | head -14 | tee -a "$R"
input_ab "P by row blocks with Z's splits (kpr)" 110 SQLLM_KERNEL_DIR="$OUT/kpr"
input_ab "the same and Z with a reference (kzpr)" 110 SQLLM_KERNEL_DIR="$OUT/kzpr"
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
