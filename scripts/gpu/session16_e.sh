#!/usr/bin/env bash
# Session 16, call 9: Pallas round 25 (scripts/gpu/pallas_lookuplist.py: the lookup kernel with kernel B folded in),
# checked against the embedded pair and exported; the configs come back as $OUT/sl.tar.gz.
. scripts/gpu/preamble.sh
EXPORT=1 timeout 400 python3 scripts/gpu/pallas_lookuplist.py > "$OUT/pallas.log" 2>&1; echo "pallas rc=$?" | tee -a "$R"
grep -vE "^$" "$OUT/pallas.md" | cut -c1-300 | tail -40 | tee -a "$R"
[ -d "$OUT/kernels" ] && tar -czf "$OUT/sl.tar.gz" -C "$OUT/kernels" . && rm -rf "$OUT/kernels"
exit 0
