#!/usr/bin/env bash
# Session 16, calls 7-8: why the fused merge (round 24, volatile loads) was slower (call 6). Pallas round 24's modes
# (MODES=vol,plain,vec,never: checked, configs for G = 1, 4 to /tmp/sets/{mode}), then CUPTI per-kernel times of the
# attention benchmark's decode at LLaMA-2-7B and LLaMA-3-8B 32K with each mode's kernel (a temporary build reading
# SQLLM_TEST_KERNEL_DIR and had call 6's fused path; the committed code has neither), and with the merge kernel
# (SQLLM_SQUEEZE_SEGMERGE=1).
. scripts/gpu/preamble.sh
export MODES=${MODES:-vol,plain,vec,never}
S=/tmp/sets
if [ ! -d $S/vol ]; then  # (the call that ran it first stopped at MODES unbound below; its rerun found /tmp/sets)
  timeout 300 python3 scripts/gpu/pallas_segmerge.py > "$OUT/pallas.log" 2>&1; echo "pallas rc=$?" | tee -a "$R"
  grep -E "worst|exported|run 1:" "$OUT/pallas.md" | cut -c1-250 | tee -a "$R"
  rm -rf $S; mv "$OUT/sets" $S
fi
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768; do
  cupti_unit "$sc merge kernel" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_SQUEEZE_SEGMERGE=1
  for mode in ${MODES//,/ }; do
    [ -d $S/$mode ] && cupti_unit "$sc fused, $mode" ${sc%%:*} ${sc##*:} sq-engine-paged-sel-seg-look SQLLM_TEST_KERNEL_DIR=$S/$mode
  done
done
exit 0
