#!/usr/bin/env bash
# Prepared in session 18; its parts ran in session 19 (scripts/gpu/session19_a.sh and _c.sh): Pallas round 30 (scripts/gpu/pallas_scores.py,
# ROUND=30): round 17's kernel Z with a fixed reference (the embedded Z's contract) before kernel P by row blocks,
# checked and timed against the embedded pair, exported as scores_z_d{64,128}.cfg to $OUT/kernels; then, if the
# checks passed, the engine with it through SQLLM_KERNEL_DIR (no Go change: the file replaces the embedded Z):
# TestSqueezedInputBF16 on the device, and the attention benchmark's input phase by the slope, with it and without,
# one process each. Build first (here): bash scripts/gpu/build.sh. About 6 minutes.
. scripts/gpu/preamble.sh
T0=$SECONDS
ROUND=30 EXPORT=1 timeout 200 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas_stdout.txt" 2>&1
echo "pallas rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -v "^  File\|^    " "$OUT/pallas.md" | tail -10 | tee -a "$R"
if [ ! -f "$OUT/kernels/scores_z_d128.cfg" ]; then echo "no export: stop" | tee -a "$R"; exit 0; fi
SQLLM_KERNEL_DIR="$OUT/kernels" device_test
input_ab "Z with a reference (SQLLM_KERNEL_DIR)" 150 SQLLM_KERNEL_DIR="$OUT/kernels"
input_ab "embedded Z" 150 SQLLM_KERNEL_DIR=
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
