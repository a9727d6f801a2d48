#!/usr/bin/env bash
# Session 16, call 10 (PHASE=1; PHASE=2 never ran): the lookup kernel that writes the kept list (squeeze/kernels/
# select_sl_*, Pallas round 25), the default on that build, against the lookup kernel followed by kernel B
# (SQLLM_SQUEEZE_LOOKUPLIST=0). It was slower; its Go side (lookupListCall, NoLookupList, the select_sl configs) was
# reverted, and the committed code reads no SQLLM_SQUEEZE_LOOKUPLIST.
# PHASE=1 (call 10): TestSqueezedInputBF16 on the device (ProbeLookup, then the bundled model's decode steps through the
# new kernel); CUPTI per-kernel times of the attention benchmark's decode (sq-engine-paged-sel-seg-look, 8 layers) at
# LLaMA-2-7B 32K and 128K and LLaMA-3-8B 32K, each way; the benchmark's totals (four shapes, ten calls a repetition),
# two processes each way, alternating (the every-key-kept check in the first).
# PHASE=2 (not run): the engine at 32K (7B, 8B) and 128K (7B) each way. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
if [ "${PHASE:-1}" = 1 ]; then
  device_test  # (the call ran these lines written out; preamble.sh's device_test now)
  lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
  for sc in 7b:32768 8b:32768 7b:131072; do
    for v in "" 0; do
      cupti_unit "$sc SQLLM_SQUEEZE_LOOKUPLIST=$v" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_SQUEEZE_LOOKUPLIST=$v
    done
  done
  ab_totals "totals, list in the lookup kernel (SQLLM_SQUEEZE_LOOKUPLIST unset)" empty,dense,sq-engine-paged-sel-seg-look true
  for v in 0 "" 0; do
    ab_totals "totals, SQLLM_SQUEEZE_LOOKUPLIST=$v" empty,dense,sq-engine-paged-sel-seg-look false SQLLM_SQUEEZE_LOOKUPLIST=$v
  done
else
  engine_ab SQLLM_SQUEEZE_LOOKUPLIST "0 auto" llama-2-7b LLaMA-2-7B 32768 3 120
  engine_ab SQLLM_SQUEEZE_LOOKUPLIST "0 auto" llama-3-8b LLaMA-3-8B 32768 3 120
  engine_ab SQLLM_SQUEEZE_LOOKUPLIST "0 auto" llama-2-7b LLaMA-2-7B 131072 2 150
fi
exit 0
