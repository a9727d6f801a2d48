#!/usr/bin/env bash
# Session 18, call 1: Pallas round 26 (scripts/gpu/pallas_input.py): a user input's attention over the kept rows and its
# own tokens in one kernel, checked, timed against the engine's path in jax (gather + cuDNN ×2 + merge) at the four
# input shapes, and the fastest passing choice exported (EXPORT=1) to $OUT/kernels.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$OUT/pallas.md"
EXPORT=1 timeout 540 python3 scripts/gpu/pallas_input.py > "$OUT/stdout.txt" 2>&1
echo "rc=$?" | tee -a "$OUT/pallas.md"
tail -5 "$OUT/stdout.txt"
exit 0
