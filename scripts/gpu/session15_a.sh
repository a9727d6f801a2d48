#!/usr/bin/env bash
# Session 15, call 1: Pallas round 22 (scripts/gpu/pallas_lookup.py): kernel A with the cluster scores and pads
# folded in (select_s) and kernel B with a many-way search (select_b2): checked, timed in jax, exported
# (kernels.tgz: select_s_k{Kp}.cfg, select_b2_k{Kp}_{order,sorted}.cfg).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$R"
EXPORT=1 EXPORT_WARPS="${EXPORT_WARPS:-}" EXPORT_B2=${EXPORT_B2:-} EXPORT_B3=${EXPORT_B3:-} B3_ONLY=${B3_ONLY:-} EXPORT_ONLY=${EXPORT_ONLY:-} OUT=$OUT timeout ${T1:-500} python3 scripts/gpu/pallas_lookup.py > "$OUT/lookup.log" 2>&1
echo "lookup rc=$?" | tee -a "$R"
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
exit 0
