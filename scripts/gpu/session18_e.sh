#!/usr/bin/env bash
# Session 18, call 5: Pallas round 29 (scripts/gpu/pallas_scores.py, ROUND=29): kernels Z and P by row blocks in one
# kernel, checked and timed against the embedded pair, the fastest passing choice exported to $OUT/kernels; then, if it
# passed, the engine with it through SQLLM_KERNEL_DIR (squeeze.KernelDir): TestSqueezedInputBF16 on the device (the
# probe runs it), and the attention benchmark's input phase by the slope, fused against SQLLM_SCORES_P=rows (kernel Z,
# then P by row blocks), one process each. Build first (here): bash scripts/gpu/build.sh. The fused path in the Go code
# (squeeze.ScoresP, with SQLLM_SCORES_P unset taking scores_zp_d{D}.cfg where present) was a temporary build, reverted
# after this call: with the committed code both processes run kernel Z, then P by row blocks.
. scripts/gpu/preamble.sh
T0=$SECONDS
ROUND=29 EXPORT=1 timeout 200 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas_stdout.txt" 2>&1
echo "pallas rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -v "^  File\|^    " "$OUT/pallas.md" | tail -12 | tee -a "$R"
if [ ! -f "$OUT/kernels/scores_zp_d128.cfg" ]; then echo "no export: stop" | tee -a "$R"; exit 0; fi
export SQLLM_KERNEL_DIR="$PWD/$OUT/kernels"; case "$OUT" in /*) export SQLLM_KERNEL_DIR="$OUT/kernels";; esac
device_test
input_ab "Z and P by row blocks fused (SQLLM_KERNEL_DIR)" 150 SQLLM_SCORES_P=
input_ab "Z, then P by row blocks (SQLLM_SCORES_P=rows)" 150 SQLLM_SCORES_P=rows
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
