#!/usr/bin/env bash
# Session 12, third call. (1) LLaMA-2-7B at 130,000 tokens in the engine, dense then squeezed, with the per-layer KV
# writes and the memory cache making room before it computes a prefix (Memory.MakeRoom: the second call's squeezed
# prefix was computed while the dense one, released but cached, still held 68 GB). (2) The attention benchmark, 512-token
# input, with round 15's base-2 cluster-score kernels embedded. (3) TestSqueezedInputBF16 on XLA (the kernels after
# squeeze.ProbeScores, logits against dense). (4) The attention benchmark's every-key-kept check (small context) of sq-engine-sel-sk.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
echo "== 7B 130000 tokens, default memory fraction, no disk cache" | tee -a "$R"
/usr/bin/time -f "wall %e s, max RSS %M KB" timeout 230 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 \
  -squeeze-input 512 -decode 32 -reps 1 -memory-cache-gib 100 -cache-dir - -model gpu-run/models/llama-2-7b -label LLaMA-2-7B \
  -lens 130000 2>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$R"
tail -3 "$OUT/b7.err" | cut -c1-400 | tee -a "$R"
cd llama
echo "== input, round 15 configs" | tee -a "$R"
timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input -attnbench.check=false \
  -attnbench.variants empty,dense-fused,sq-engine-sel-sk,lookup-sel-sk -attnbench.cluster=false \
  -attnbench.out "$OUT/input.md" > "$OUT/input.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/input.md" | tee -a "$R"
SQLLM_TEST_BACKEND=xla timeout 90 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|logit|relative" "$OUT/tests.log" | head -12 | cut -c1-300 | tee -a "$R"
echo "== every-key-kept check (small context)" | tee -a "$R"
timeout 100 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 131072 -attnbench.phases input -attnbench.check=true -attnbench.reps 2 \
  -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.cluster=false -attnbench.out "$OUT/check.md" > "$OUT/check.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -iE "check|differ|max" "$OUT/check.log" | head -12 | cut -c1-300 | tee -a "$R"
exit 0
