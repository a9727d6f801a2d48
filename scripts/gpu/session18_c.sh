#!/usr/bin/env bash
# Session 18, call 3: Pallas round 28 (scripts/gpu/pallas_scores.py, ROUND=28): kernel P by row blocks in Z's launch,
# checked against XLA's scores, timed against the embedded P after the same Z at the four input shapes, the fastest
# passing (warps, stages) exported (EXPORT=1) to $OUT/kernels.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$OUT/pallas.md"
ROUND=28 EXPORT=1 timeout 540 python3 scripts/gpu/pallas_scores.py > "$OUT/stdout.txt" 2>&1
echo "rc=$?" | tee -a "$OUT/pallas.md"
tail -3 "$OUT/stdout.txt"
exit 0
