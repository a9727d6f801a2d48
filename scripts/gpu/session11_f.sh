#!/usr/bin/env bash
# Session 11, sixth call: the cluster-score kernels end to end. (1) llama's TestSqueezedInputBF16 on XLA (the bundled
# model in bfloat16, a 40-token input = 120 query rows a KV head: the kernels after squeeze.ProbeScores; logits against
# dense). (2) LLaMA-2-7B at 128K in the engine with SQLLM_XLA_OPTIONS=memory_fraction=0.92 (session 10 ran out of
# memory; prepared in scripts/gpu/session11_next.sh). (3) LLaMA-3-8B at 128K in the engine (session 10's call 7 shape).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
(cd llama && SQLLM_TEST_BACKEND=xla timeout 120 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
 echo "tests rc=$?" | tee -a "$R")
grep -E "^(---|===|ok|FAIL|PASS)|logit|relative" "$OUT/tests.log" | head -30 | cut -c1-300 | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2"
echo "== 7B 128K (130000), memory_fraction=0.92" | tee -a "$R"
SQLLM_XLA_OPTIONS=memory_fraction=0.92 timeout 240 $B -memory-cache-gib 100 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 130000 \
  2>>"$OUT/b7l.err" | grep "^| LLaMA" | tee -a "$R"
echo "== 8B 128K (130000)" | tee -a "$R"
timeout 190 $B -memory-cache-gib 24 -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 130000 2>>"$OUT/b8l.err" | grep "^| LLaMA" | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done | tee -a "$R"
exit 0
