#!/usr/bin/env bash
# Session 14, call 3. (1) Pallas round 18 (scripts/gpu/pallas_finish.py): the decode step's finish kernel (the
# dynamic segment's attention and the merge of the paged kernel's splits, one launch), checked, timed against XLA's
# graph, the fastest configuration exported (kernels.tgz). (2) The LLaMA-2-7B 32K squeezed decode step's kernels
# (session14_b.sh; call 2's table for it did not come back).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$R"
echo "== Pallas round 18" | tee -a "$R"
EXPORT=1 OUT=$OUT timeout ${T1:-300} python3 scripts/gpu/pallas_finish.py > "$OUT/finish.log" 2>&1
echo "finish rc=$?" | tee -a "$R"
tail -5 "$OUT/finish.log" | cut -c1-400 | tee -a "$R"
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
VARIANTS_8B32= VARIANTS_8B128= VARIANTS_IN= VARIANTS_7B32=sq-engine-paged-sel bash scripts/gpu/session14_b.sh > /dev/null 2>&1
exit 0
