#!/usr/bin/env bash
# Session 14, call 5: Pallas round 19 (scripts/gpu/pallas_finish.py): the paged kernel with the decode step's dynamic
# segment as more programs of the same launch, checked, timed against the paged kernel + XLA's dense attention and
# merges, exported (kernels.tgz: pagedseg_g{G}_d{D}.cfg).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$R"
EXPORT=1 OUT=$OUT timeout ${T1:-400} python3 scripts/gpu/pallas_finish.py > "$OUT/seg.log" 2>&1
echo "seg rc=$?" | tee -a "$R"
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
exit 0
