#!/usr/bin/env bash
# Session 16, call 1: Pallas round 23 (scripts/gpu/pallas_tiles.py: the paged kernels' tile rows, warps and one-row
# body, checked and exported a set at a time to $OUT/sets, returned as $OUT/sets.tar.gz), then CUPTI per-kernel times of
# the attention benchmark's decode (sq-engine-paged-sel-seg-look, 8 layers) at LLaMA-2-7B 32K for each set.
# Ran (calls 1-2) on a temporary build whose squeeze package read SQLLM_TEST_KERNEL_DIR (kernel configs from that
# directory first) and SQLLM_TEST_PAGED_ROWS (the tile rows R); no set was faster, and the committed code reads neither.
# Call 2 was SHAPES=8b:32768 UNITS="none r64w4 r64w8 g4w8" with sets.tar.gz from call 1 in the working tree.
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
S=/tmp/sets
if [ -f sets.tar.gz ]; then mkdir -p $S && tar -xzf sets.tar.gz -C $S; else
  timeout 330 python3 scripts/gpu/pallas_tiles.py > "$OUT/pallas.log" 2>&1; echo "pallas rc=$?" | tee -a "$R"
  grep -E "^set |not exported|failed" "$OUT/pallas.md" | cut -c1-300 | tee -a "$R"
  mv "$OUT/sets" $S && tar -czf "$OUT/sets.tar.gz" -C $S .
fi
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
rows() { case $1 in r64*) echo 64;; *) echo 32;; esac; }
for sc in ${SHAPES:-7b:32768}; do
  for set in ${UNITS:-none g1pf2 g1pf2s2 r64w4 r64w8 r64pf2w8}; do
    if [ $set = none ]; then env=(SQLLM_TEST_KERNEL_DIR=); else env=(SQLLM_TEST_KERNEL_DIR=$S/$set SQLLM_TEST_PAGED_ROWS=$(rows $set)); fi
    cupti_unit "$sc $set" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look "${env[@]}"
  done
done
for set in ${TOTALS:-}; do
  if [ $set = none ]; then env=(SQLLM_TEST_KERNEL_DIR=); else env=(SQLLM_TEST_KERNEL_DIR=$S/$set SQLLM_TEST_PAGED_ROWS=$(rows $set)); fi
  ab_totals "totals, $set" empty,dense,sq-engine-paged-sel-seg-look true "${env[@]}"
done
exit 0
