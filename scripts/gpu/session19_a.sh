#!/usr/bin/env bash
# Session 19, call 1. (1) Pallas round 30 (Z with a fixed reference before P by row blocks; exported to $OUT/kernels)
# and round 31 (P by row blocks with Z's centroid splits, short and 512-token inputs). (2) On the device:
# TestSqueezedInputFreshRows (a user input's head-major rows through cuDNN's causal call against the token-major
# graph, every row) and TestSqueezedInputBF16. (3) The attention benchmark's input phase by the slope: this build
# (head-major rows for a fresh segment), the former build (gpu-run/old, commit a42a853), this build again.
# Build first (here): bash scripts/gpu/build.sh, and the former test binary gzipped into gpu-run/old/llama.test.gz.
. scripts/gpu/preamble.sh
T0=$SECONDS
gunzip -c gpu-run/old/llama.test.gz > bin/llama.test.old && chmod +x bin/llama.test.old
ROUND=30 EXPORT=1 timeout 150 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas30_stdout.txt" 2>&1
echo "pallas 30 rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
ROUND=31 timeout 150 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas31_stdout.txt" 2>&1
echo "pallas 31 rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -v "^  File\|^    " "$OUT/pallas.md" | tail -24 | tee -a "$R"
(cd llama && SQLLM_TEST_BACKEND=xla timeout 120 ../bin/llama.test -test.run '^(TestSqueezedInputFreshRows|TestSqueezedInputBF16)$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1)
echo "tests rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|head-major step against" "$OUT/tests.log" | cut -c1-260 | head -12 | tee -a "$R"
input_ab "head-major rows (this build)" 110
AB_BIN=bin/llama.test.old input_ab "token-major rows (a42a853)" 110
if [ $((SECONDS-T0)) -lt 470 ]; then input_ab "head-major rows (this build), again" 110; fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
