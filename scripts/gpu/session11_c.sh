#!/usr/bin/env bash
# Session 11, third call: the cluster-score kernels (squeeze/scoresk.go) in the engine's graphs. (1) The attention
# benchmark's 512-token input, with the every-key-kept check first: sq-engine-sel (XLA's scores) against
# sq-engine-sel-sk (the kernels), and their lookups alone, 7B / 8B shapes at 32K and 128K. (2) The engine's whole
# steps at 7B 32K: the default (the kernels after squeeze.ProbeScores: "score kernels" in the mode column) and
# SQLLM_SQUEEZE_SCORES=0 (XLA's scores), one process each.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
(cd llama && timeout 220 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
  -attnbench.variants empty,dense-fused,sq-engine-sel,sq-engine-sel-sk,lookup-sel,lookup-sel-sk -attnbench.cluster=false \
  -attnbench.out "$OUT/input.md" > "$OUT/input.log" 2>&1; echo "input rc=$?" | tee -a "$R")
grep -E "^\| (LLaMA|tiny)|vs dense|differs|FAIL|failed" "$OUT/input.md" "$OUT/input.log" | cut -c1-400 | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
echo "== 7B 32K, default" | tee -a "$R"
timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
echo "== 7B 32K, SQLLM_SQUEEZE_SCORES=0" | tee -a "$R"
SQLLM_SQUEEZE_SCORES=0 timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7x.err" | grep "^| LLaMA" | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done | tee -a "$R"
exit 0
