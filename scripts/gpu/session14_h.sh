#!/usr/bin/env bash
# Session 14: the merge kernel (squeeze/kernels/merge_*, Pallas round 21) after the paged kernel with the dynamic
# segment. (1) TestSqueezedInputBF16 on the device, defaults (ProbePagedSeg, then the bundled model's decode through
# both kernels). (2) The attention benchmark's decode, ten calls a repetition, every-key-kept check first: with the
# merge kernel (default) and with XLA's merge (SQLLM_SQUEEZE_SEGMERGE=0), two processes, the four shapes. (3) The
# engine's decode at LLaMA-2-7B 32K: the merge kernel against XLA's merge, one process each.
. scripts/gpu/preamble.sh
cd llama
SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|decode step" "$OUT/tests.log" | head -6 | cut -c1-250 | tee -a "$R"
for mk in 1 0; do
  echo "== decode, batch 10, SQLLM_SQUEEZE_SEGMERGE=$mk" | tee -a "$R"
  SQLLM_SQUEEZE_SEGMERGE=$mk timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=$([ $mk = 1 ] && echo true || echo false) \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg -attnbench.cluster=false -attnbench.out "$OUT/d$mk.md" > "$OUT/d$mk.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "seg vs dense" "$OUT/d$mk.md" | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| (dense|sq)" "$OUT/d$mk.md" | tee -a "$R"
  rm -f "$OUT/d$mk.log"
done
cd ..
engine_ab SQLLM_SQUEEZE_SEGMERGE "1 0" llama-2-7b LLaMA-2-7B 32768 3 120
exit 0
