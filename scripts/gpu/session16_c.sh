#!/usr/bin/env bash
# Session 16, call 6 (PHASE=1; PHASE=2 never ran): the paged kernel with the dynamic segment and the merge in one launch
# (squeeze/kernels/pagedsegm_*, Pallas round 24), the default on that build, against the merge kernel as a second launch
# (SQLLM_SQUEEZE_SEGMERGE=1). The fused kernel was slower; its Go side (SegMergeMode, the pagedsegm configs, the probe
# run twice) was reverted, and the committed code reads SQLLM_SQUEEZE_SEGMERGE as before (0: XLA's merge).
# PHASE=1 (call 6): TestSqueezedInputBF16 on the device (the bundled model's decode steps through the fused kernel, after
# ProbePagedSeg, which now runs its executable twice), then CUPTI per-kernel times of the attention benchmark's decode
# (sq-engine-paged-sel-seg-look, 8 layers) at LLaMA-2-7B and LLaMA-3-8B 32K, each way; then the benchmark's totals, four
# shapes, ten calls a repetition, one process each way (the every-key-kept check in the first).
# PHASE=2 (not run): two more processes of totals each way, alternating, and the engine at 32K (7B, 8B) each way.
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
if [ "${PHASE:-1}" = 1 ]; then
  device_test  # (the call ran these lines written out; preamble.sh's device_test now)
  lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
  for sc in 7b:32768 8b:32768; do
    for v in "" 1; do
      cupti_unit "$sc SQLLM_SQUEEZE_SEGMERGE=$v" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_SQUEEZE_SEGMERGE=$v
    done
  done
  ab_totals "totals, fused (SQLLM_SQUEEZE_SEGMERGE unset)" empty,dense,sq-engine-paged-sel-seg-look true
  ab_totals "totals, merge kernel (SQLLM_SQUEEZE_SEGMERGE=1)" empty,dense,sq-engine-paged-sel-seg-look false SQLLM_SQUEEZE_SEGMERGE=1
else
  for v in 1 "" 1 ""; do
    ab_totals "totals, SQLLM_SQUEEZE_SEGMERGE=$v" empty,dense,sq-engine-paged-sel-seg-look false SQLLM_SQUEEZE_SEGMERGE=$v
  done
  engine_ab SQLLM_SQUEEZE_SEGMERGE "1 auto" llama-2-7b LLaMA-2-7B 32768 3 120
  engine_ab SQLLM_SQUEEZE_SEGMERGE "1 auto" llama-3-8b LLaMA-3-8B 32768 3 120
fi
exit 0
