#!/usr/bin/env bash
# Session 15, call 9: kernel B with a two-load search (select_b3, pallas_lookup.py EXPORT_B3=1) against the binary
# search: CUPTI per-kernel times of the attention benchmark's decode (sq-engine-paged-sel-seg-look, 8 layers, one process
# a run) at three shapes, then the benchmark's totals (ten calls a repetition, four shapes), one process each.
# Ran on a temporary build in which SQLLM_TEST_SELB3=1 picked the select_b3 configs (embedded for the measurement only;
# the committed code reads no such variable).
# Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for sc in 7b:32768 8b:32768 7b:131072; do
  for b3 in "" 1; do
    echo "== ${sc} SQLLM_TEST_SELB3=$b3" | tee -a "$R"
    (cd llama && SQLLM_TEST_SELB3=$b3 CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 100 ../bin/llama.test \
      -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes ${sc%%:*} -attnbench.ctx ${sc##*:} \
      -attnbench.phases decode -attnbench.check=false -attnbench.variants sq-engine-paged-sel-seg-look -attnbench.cluster=false \
      -attnbench.layers 8 -attnbench.reps 200 > "$OUT/t.log" 2>&1)
    echo "rc=$?" | tee -a "$R"
    python3 scripts/gpu/cupti/units.py /tmp/t.trace 1000 | grep -E "^unit span|^\| [0-9] \|" | head -9 | tee -a "$R"
    rm -f /tmp/t.trace
  done
done
for b3 in "" 1 "" 1; do
  echo "== totals, SQLLM_TEST_SELB3=$b3" | tee -a "$R"
  (cd llama && SQLLM_TEST_SELB3=$b3 timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=$([ -n "$b3" ] && echo true || echo false) \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg-look -attnbench.cluster=false -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "look vs dense|FAIL|panic" "$OUT/ab.log" | head -4 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md"
done
rm -f "$OUT/t.log" "$OUT/ab.log"
exit 0
