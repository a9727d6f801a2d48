#!/usr/bin/env bash
# Session 15, call 10: the paged kernel's layout with less padding (squeeze.pagedLayout: the fewest programs a head
# whose slots hold the list, 28 programs of 4 tiles for the 3,392-slot lists at 32K instead of 32 of 4) against the
# former layout (a multiple of 8 programs), on a temporary build in which SQLLM_TEST_OLDLAYOUT=1 picked the former one.
# CUPTI per-kernel times of the attention benchmark's decode (sq-engine-paged-sel-seg-look, 8 layers, one process a
# run) at 7B and 8B 32K, then the benchmark's totals (ten calls a repetition, four shapes, every-key-kept check in the
# first), one process each, alternating. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768; do
  for old in "" 1; do
    cupti_unit "${sc} SQLLM_TEST_OLDLAYOUT=$old" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_TEST_OLDLAYOUT=$old
  done
done
for old in "" 1 "" 1; do
  ab_totals "totals, SQLLM_TEST_OLDLAYOUT=$old" empty,dense,sq-engine-paged-sel-seg-look $([ -z "$old" ] && echo true || echo false) SQLLM_TEST_OLDLAYOUT=$old
done
exit 0
