#!/usr/bin/env bash
# Session 15, call 6: the lookup kernel's time with 4, 8 and 16 warps (SQLLM_TEST_LOOKUP_WARPS; configs exported by
# pallas_lookup.py with EXPORT_WARPS="4 8 16"), from CUPTI timelines of the attention benchmark's decode
# (sq-engine-paged-sel-seg-look, 8 chained layers, one process a run, as session14_b.sh), at the four shapes: each
# kernel's duration is the device's, free of the between-process spread of the benchmark's totals.
# Build first (here): bash scripts/gpu/build.sh.
# Ran on a temporary build (the calls ran the loops written out; they are preamble.sh's cupti_unit and ab_totals now):
# SQLLM_TEST_LOOKUP_WARPS and SQLLM_TEST_SELB2 picked the extra configs
# (select_s_k{Kp}_w{W}, select_b2_{ways}_k{Kp}_{layout}; pallas_lookup.py EXPORT_WARPS / EXPORT_B2) that were embedded
# for the measurement only; the committed code reads neither.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768 7b:131072 8b:131072; do
  for w in ${WARPS:-4 8 16}; do
    cupti_unit "${sc} warps $w" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_TEST_LOOKUP_WARPS=$w
  done
done
exit 0
