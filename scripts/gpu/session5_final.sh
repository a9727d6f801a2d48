#!/usr/bin/env bash
# Session 5's last call: TestHierarchicalPrefix through XLA (the hierarchical index's fine selection now
# searches in passes), bench -squeeze-budget 0.1 for the LLaMA-3-8B shape at 32K, the LLaMA-2-7B 8K+64 TTFT
# memory hit, then the LLaMA-2-7B shape at 32K with the hierarchical row too. Engine defaults (command
# buffers for steps of <= 128 rows). Results are appended to $OUT/results.md as they come.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test \
   -test.run 'TestHierarchicalPrefix' -test.v 2>&1 | grep -E "hier_test|^--- " | cut -c1-300 | tee -a "$R" )
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2"
timeout 170 $B -memory-cache-gib 40 -model gpu-run/models/llama-3-8b -label "LLaMA-3-8B shape" -lens 32768 2>>"$OUT/sq.err" \
  | grep --line-buffered "^| LLaMA" | tee -a "$R"
timeout 60 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "LLaMA-2-7B shape" \
  -lens= -ttft-context 8192 -ttft-question 64 -reps 5 -ttft-disk=false -memory-cache-gib 8 2>>"$OUT/ttft.err" \
  | grep --line-buffered "^| LLaMA" | tee -a "$R"
timeout 230 $B -squeeze-hierarchical -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" \
  -lens 32768 2>>"$OUT/sq.err" | grep --line-buffered "^| LLaMA" | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -2 "$f" | cut -c1-300; }; done
exit 0
