#!/usr/bin/env bash
# Session 11, fourth call: round 12 of the cluster-score kernels (scripts/gpu/pallas_scores.py): kernels Z and P
# timed apart over (BM, BK, warps, stages) at the 128K shapes, the best pair checked, timed at all four shapes
# against XLA and round 11's configs, and exported.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
ROUND=12 EXPORT=1 timeout 450 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
(cd "$OUT" && tar czf kernels.tgz kernels 2>/dev/null && rm -rf kernels)
grep -v "^\s*$" "$OUT/pallas.md" | tail -60
exit 0
