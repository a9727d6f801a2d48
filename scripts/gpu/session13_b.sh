#!/usr/bin/env bash
# Session 13, second call: the paged kernel for grouped queries is now round 14's pf2 (blocks prefetched, 1 stage;
# squeeze/kernels/paged_g{2..8}_d*.cfg.gz) and PagedAuto takes it for up to 8 query rows a KV head (was 1) once
# ProbePaged (now also 4 rows) passed. (1) TestSqueezedInputBF16 on the device: the bundled model (3 query rows a
# KV head, head dim 64) decodes through it. (2) The attention benchmark's decode: every-key-kept check, then dense,
# XLA's gathers (sq-engine-sel) and the paged kernel (sq-engine-paged-sel) and part-paged at the four shapes.
# (3) A 512-token input's squeezed step stage by stage (session13_next.sh's first part: part-kept, part-dyn-in,
# part-kept-dyn beside the whole step and its lookup).
. scripts/gpu/preamble.sh
cd llama
SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|paged|diff|logits" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$R"
echo "== decode" | tee -a "$R"
timeout 230 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=true \
  -attnbench.variants empty,dense,sq-engine-sel,sq-engine-paged-sel,part-paged,part-paged-dyn -attnbench.cluster=false \
  -attnbench.out "$OUT/decode.md" > "$OUT/decode.log" 2>&1
echo "decode rc=$?" | tee -a "$R"
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode.md" | tee -a "$R"
echo "== input stages" | tee -a "$R"
timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=false \
  -attnbench.variants empty,dense-fused,sq-engine-sel-sk,lookup-sel-sk,part-kept,part-dyn-in,part-kept-dyn \
  -attnbench.cluster=false -attnbench.out "$OUT/stages.md" > "$OUT/stages.log" 2>&1
echo "stages rc=$?" | tee -a "$R"
grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/stages.md" | tee -a "$R"
exit 0
