#!/usr/bin/env bash
# Session 15, call 7: the lookup kernel as embedded (8 warps from Kp = 2,048; squeeze.LookupAutoMaxWork). (1)
# TestSqueezedInputBF16 on the device with the defaults (ProbeLookup, then the bundled model's decode steps through the
# lookup kernel). (2) The attention benchmark's decode, ten calls a repetition, every-key-kept check first, two
# processes: XLA's scores + kernel A (sq-engine-paged-sel-seg) against the lookup kernel (sq-engine-paged-sel-seg-look),
# dense beside, at the four shapes. (3) The engine at 32K, LLaMA-2-7B and LLaMA-3-8B shapes, SQLLM_SQUEEZE_LOOKUP=0
# and unset. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
cd llama
SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)" "$OUT/tests.log" | head -5 | tee -a "$R"
for run in 1 2; do
  echo "== decode, batch 10, process $run" | tee -a "$R"
  timeout ${T2:-150} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
    -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=$([ $run = 1 ] && echo true || echo false) \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look -attnbench.cluster=false \
    -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "look vs dense|FAIL|panic" "$OUT/decode10.log" | head -6 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
  rm -f "$OUT/decode10.md" "$OUT/decode10.log"
done
cd ..
engine_ab SQLLM_SQUEEZE_LOOKUP "0 auto" llama-2-7b LLaMA-2-7B 32768 3 120
engine_ab SQLLM_SQUEEZE_LOOKUP "0 auto" llama-3-8b LLaMA-3-8B 32768 3 120
rm -f "$OUT/tests.log"
exit 0
