#!/usr/bin/env bash
# Session 14: the paged kernel with the decode step's dynamic segment in its launch (squeeze/kernels/pagedseg_*,
# squeeze.AttendSelectedDyn; Pallas round 19). (1) TestSqueezedInputBF16 on the device with SQLLM_SQUEEZE_PAGEDSEG=1:
# the bundled model (3 query rows a KV head, head dim 64) decodes through it, after ProbePagedSeg. (2) The attention
# benchmark's decode, ten calls a repetition, every-key-kept check first: the paged kernel with XLA's dense attention
# over the dynamic segment (sq-engine-paged-sel) against the dynamic segment in its launch (sq-engine-paged-sel-seg),
# dense beside, at the four shapes. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
cd llama
SQLLM_SQUEEZE_PAGEDSEG=1 SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v \
  -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|paged|diff|logits" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$R"
echo "== decode, batch 10" | tee -a "$R"
timeout ${T2:-330} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=true \
  -attnbench.variants empty,dense,sq-engine-paged-sel,sq-engine-paged-sel-seg -attnbench.cluster=false \
  -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -iE "check|max.*diff|every key" "$OUT/decode10.log" | head -20 | cut -c1-250 | tee -a "$R"
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
exit 0
