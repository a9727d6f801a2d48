#!/usr/bin/env bash
# Session 12, seventh call: pallas_scores.py after its base-2 kernels were folded into make_scores_z / make_scores_p
# (base2=True): round 15's checks and export without the timings (TIMING=0), and the exported configs compared byte for
# byte with the embedded squeeze/kernels/scores_{z,p}_d{64,128}.cfg.gz (made by call 2 before the refactor).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
ROUND=15 EXPORT=1 TIMING=0 OUT=$OUT timeout 200 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
grep -E "check|IR|exported|passed|FAIL" "$OUT/pallas.log" | cut -c1-200 | tee -a "$R"
for k in z p; do for d in 64 128; do
  if gunzip -c squeeze/kernels/scores_${k}_d${d}.cfg.gz | cmp -s - "$OUT/kernels/scores_${k}_d${d}.cfg"; then echo "scores_${k}_d${d}: identical"; else echo "scores_${k}_d${d}: DIFFERS"; fi
done; done | tee -a "$R"
rm -rf "$OUT/kernels"
exit 0
