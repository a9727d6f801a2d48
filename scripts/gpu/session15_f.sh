#!/usr/bin/env bash
# Session 15, call 9: kernel B with a two-load search (select_b3, pallas_lookup.py EXPORT_B3=1) against the binary
# search: CUPTI per-kernel times of the attention benchmark's decode (sq-engine-paged-sel-seg-look, 8 layers, one process
# a run) at three shapes, then the benchmark's totals (ten calls a repetition, four shapes), one process each.
# Ran on a temporary build in which SQLLM_TEST_SELB3=1 picked the select_b3 configs (embedded for the measurement only;
# the committed code reads no such variable).
# (The call ran these loops written out; they are preamble.sh's cupti_unit and ab_totals now.)
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768 7b:131072; do
  for b3 in "" 1; do
    cupti_unit "${sc} SQLLM_TEST_SELB3=$b3" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_TEST_SELB3=$b3
  done
done
for b3 in "" 1 "" 1; do
  ab_totals "totals, SQLLM_TEST_SELB3=$b3" empty,dense,sq-engine-paged-sel-seg-look $([ -n "$b3" ] && echo true || echo false) SQLLM_TEST_SELB3=$b3
done
exit 0
