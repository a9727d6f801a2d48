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
    echo "== ${sc} SQLLM_TEST_OLDLAYOUT=$old" | tee -a "$R"
    (cd llama && SQLLM_TEST_OLDLAYOUT=$old CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 100 ../bin/llama.test \
      -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes ${sc%%:*} -attnbench.ctx ${sc##*:} \
      -attnbench.phases decode -attnbench.check=false -attnbench.variants sq-engine-paged-sel-seg-look -attnbench.cluster=false \
      -attnbench.layers 8 -attnbench.reps 200 > "$OUT/t.log" 2>&1)
    echo "rc=$?" | tee -a "$R"
    python3 scripts/gpu/cupti/units.py /tmp/t.trace 1000 | grep -E "^unit span|^\| [0-9] \|" | head -9 | tee -a "$R"
    rm -f /tmp/t.trace
  done
done
for old in "" 1 "" 1; do
  echo "== totals, SQLLM_TEST_OLDLAYOUT=$old" | tee -a "$R"
  (cd llama && SQLLM_TEST_OLDLAYOUT=$old timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=$([ -z "$old" ] && echo true || echo false) \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg-look -attnbench.cluster=false -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "look vs dense|FAIL|panic" "$OUT/ab.log" | head -4 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md"
done
rm -f "$OUT/t.log" "$OUT/ab.log"
exit 0
