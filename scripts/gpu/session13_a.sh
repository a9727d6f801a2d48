#!/usr/bin/env bash
# Session 13, first call (no Go binaries). (1) Pallas round 16 (scripts/gpu/pallas_scores.py): the cluster-score
# kernels over a wider grid (fewer warps and rows a program, deeper pipelines) at the LLaMA-2-7B input shapes, their
# exponentials in half precision beside, the best pair checked, timed against round 15's and exported if faster.
# (2) Round 14's paged kernel with prefetched blocks (scripts/gpu/pallas_paged.py): why its IR differed between two
# shape sets (the Triton modules' diff), and its configs exported with 1 and 2 stages.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
echo "== Pallas round 16" | tee -a "$R"
ROUND=16 EXPORT=1 OUT=$OUT timeout ${T1:-330} python3 scripts/gpu/pallas_scores.py > "$OUT/scores.log" 2>&1
echo "scores rc=$?" | tee -a "$R"
tail -3 "$OUT/scores.log" | cut -c1-300 | tee -a "$R"
echo "== paged pf2: IR diff and export" | tee -a "$R"
EXPORT=1 EXPORT_ONLY=1 OUT=$OUT timeout ${T2:-150} python3 scripts/gpu/pallas_paged.py > "$OUT/paged.log" 2>&1
echo "paged rc=$?" | tee -a "$R"
tail -3 "$OUT/paged.log" | cut -c1-300 | tee -a "$R"
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
exit 0
