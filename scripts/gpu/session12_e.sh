#!/usr/bin/env bash
# Session 12, fifth call: a user input's own tokens through the fused causal kernel in the squeezed step
# (squeezeLayer.freshDyn: the dynamic segment is empty before a user input's first chunk after a prefix).
# (1) The attention benchmark, 512-token input: sq-engine-sel-sk (now fused) against sq-engine-sel-sk-xdyn (XLA's
# masked dense graph for that part, as before) and dense in the same run. (2) TestSqueezedInputBF16 on XLA (the
# 40-token input runs the fused path: 48 rows × 3 query heads a KV head). (3) The engine, LLaMA-2-7B 32K.
. scripts/gpu/preamble.sh
cd llama
echo "== input, fused causal part vs XLA's" | tee -a "$R"
timeout 220 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=true \
  -attnbench.variants empty,dense-fused,sq-engine-sel-sk,sq-engine-sel-sk-xdyn -attnbench.cluster=false \
  -attnbench.out "$OUT/input.md" > "$OUT/input.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/input.md" | tee -a "$R"
grep -E "^\| LLaMA.*input 512 \| sq-engine-sel-sk" "$OUT/input.md" | head -4 | tee -a "$R"
SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|logit" "$OUT/tests.log" | head -12 | cut -c1-300 | tee -a "$R"
cd ..
echo "== engine 7B 32K" | tee -a "$R"
timeout 150 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 \
  -memory-cache-gib 24 -cache-dir - -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
tail -2 "$OUT/b7.err" | cut -c1-300 | tee -a "$R"
exit 0
