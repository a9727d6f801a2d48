#!/usr/bin/env bash
# Session 15, call 6: the lookup kernel's time with 4, 8 and 16 warps (SQLLM_TEST_LOOKUP_WARPS; configs exported by
# pallas_lookup.py with EXPORT_WARPS="4 8 16"), from CUPTI timelines of the attention benchmark's decode
# (sq-engine-paged-sel-seg-look, 8 chained layers, one process a run, as session14_b.sh), at the four shapes: each
# kernel's duration is the device's, free of the between-process spread of the benchmark's totals.
# Build first (here): bash scripts/gpu/build.sh.
# Ran on a temporary build: SQLLM_TEST_LOOKUP_WARPS and SQLLM_TEST_SELB2 picked the extra configs
# (select_s_k{Kp}_w{W}, select_b2_{ways}_k{Kp}_{layout}; pallas_lookup.py EXPORT_WARPS / EXPORT_B2) that were embedded
# for the measurement only; the committed code reads neither.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768 7b:131072 8b:131072; do
  for w in ${WARPS:-4 8 16}; do
    echo "== ${sc} warps $w" | tee -a "$R"
    (cd llama && SQLLM_TEST_LOOKUP_WARPS=$w CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 100 ../bin/llama.test \
      -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes ${sc%%:*} -attnbench.ctx ${sc##*:} \
      -attnbench.phases decode -attnbench.check=false -attnbench.variants sq-engine-paged-sel-seg-look -attnbench.cluster=false \
      -attnbench.layers 8 -attnbench.reps ${REPS:-200} > "$OUT/t.log" 2>&1)
    echo "rc=$?" | tee -a "$R"
    python3 scripts/gpu/cupti/units.py /tmp/t.trace 1000 | grep -E "^unit span|^\| [0-9] \|" | head -9 | tee -a "$R"
    rm -f /tmp/t.trace
  done
done
rm -f "$OUT/t.log"
exit 0
