#!/usr/bin/env bash
# Session 5: command buffers (CUDA graphs) for small steps only (backend/xla compileOverrides, llama
# graphName), the all-pairs boundary search and split-K values in the squeezed step. One call:
#  1. correctness through XLA: the bundled model's greedy outputs against the CPU's (greedy_check.sh) and
#     the llama tests that compare against transformers, the pipelined decoder and the squeezed prefix;
#  2. bench -squeeze-budget 0.1 (LLaMA-2-7B shape, 32K) and the 8K+64 TTFT memory hit, with the engine's
#     defaults, then with SQLLM_SQUEEZE_PASSES=1 (selection searched in passes), then with every command
#     buffer off (XLA_FLAGS=--xla_gpu_enable_command_buffer=), in that order.
# Results are appended to $OUT/results.md as they come.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
PARTS=${PARTS:-check default passes off}  # which parts run
has() { [[ " $PARTS " == *" $1 "* ]]; }
if has check; then
  OUT=$OUT bash scripts/gpu/greedy_check.sh | tee -a "$R"
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout ${TTEST:-200} ../bin/llama.test \
     -test.run "${TESTS:-TestGoldenFloat32|TestDecodeGreedy\$|TestStepKindsAgree|TestSqueezedPrefix|TestHierarchicalPrefix}" -test.v 2>&1 \
     | tee "$OUT/tests.txt" | grep -E "^(--- |ok|FAIL|PASS)" | tee -a "$R" )
fi
sq() { # $1 label, $2 extra bench flags, rest: env assignments
  local label=$1 extra=$2; shift 2
  echo "== $label" | tee -a "$R"
  env "$@" timeout ${TSQ:-150} ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 $extra \
    -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 40 -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" \
    -lens 32768 2>>"$OUT/sq.err" | grep --line-buffered "^| LLaMA" | tee -a "$R"
}
ttft() {
  env "$@" timeout 100 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights \
    -label "LLaMA-2-7B shape" -lens= -ttft-context 8192 -ttft-question 64 -reps 5 -ttft-disk=false -memory-cache-gib 8 \
    2>>"$OUT/ttft.err" | grep --line-buffered "^| LLaMA" | tee -a "$R"
}
has default && { TSQ=240 sq "defaults (graphs for steps of <= 128 rows)" -squeeze-hierarchical; ttft; }
has passes && sq "SQLLM_SQUEEZE_PASSES=1" "" SQLLM_SQUEEZE_PASSES=1
has off && { sq "command buffers off" "" XLA_FLAGS=--xla_gpu_enable_command_buffer=; ttft XLA_FLAGS=--xla_gpu_enable_command_buffer=; }
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
