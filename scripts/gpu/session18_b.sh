#!/usr/bin/env bash
# Session 18, call 2: Pallas round 27 (scripts/gpu/pallas_input.py, ROUND=27): the input's own tokens and the merge in one
# kernel after cuDNN's kept rows, checked, timed against the engine's path in jax at the four input shapes, the
# fastest passing choice exported (EXPORT=1) to $OUT/kernels.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$OUT/pallas.md"
ROUND=27 EXPORT=1 timeout 540 python3 scripts/gpu/pallas_input.py > "$OUT/stdout.txt" 2>&1
echo "rc=$?" | tee -a "$OUT/pallas.md"
tail -5 "$OUT/stdout.txt"
exit 0
