#!/usr/bin/env bash
# Session 16, calls 3-5 (3 and 4 failed on jax's cache modifiers, see pallas_segmerge.fresh_load): Pallas round 24 (scripts/gpu/pallas_segmerge.py: the paged kernel with the dynamic segment and the
# merge in one launch), checked and exported; the configs come back as $OUT/segm.tar.gz.
. scripts/gpu/preamble.sh
EXPORT=1 timeout 400 python3 scripts/gpu/pallas_segmerge.py > "$OUT/pallas.log" 2>&1; echo "pallas rc=$?" | tee -a "$R"
grep -vE "^$" "$OUT/pallas.md" | cut -c1-300 | tail -40 | tee -a "$R"
[ -d "$OUT/kernels" ] && tar -czf "$OUT/segm.tar.gz" -C "$OUT/kernels" . && rm -rf "$OUT/kernels"
exit 0
