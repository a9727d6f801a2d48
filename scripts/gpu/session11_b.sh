#!/usr/bin/env bash
# Session 11, second call: round 11 of the cluster-score kernels (scripts/gpu/pallas_scores.py: centroid splits in
# scores_z, the row sums out of scores_p's loop; user inputs and decode steps), checks, timings, IR diff, configs.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
EXPORT=1 timeout 420 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
(cd "$OUT" && tar czf kernels.tgz kernels 2>/dev/null && rm -rf kernels)
tail -5 "$OUT/pallas.log"
exit 0
