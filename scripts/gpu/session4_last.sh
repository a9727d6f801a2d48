#!/usr/bin/env bash
# Session 4's last call: the LLaMA-2-7B TTFT (8K fixed context + 64-token question, memory hits) and the
# decode/prefill figures of this engine then transformers for the LLaMA-2-7B and LLaMA-3-8B shapes, in one
# call. Every result line is appended to $OUT/results.md as it comes (a timeout keeps what finished).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
LENS=${LENS:-4096,32768}
timeout 100 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "LLaMA-2-7B shape" \
  -lens= -ttft-context 8192 -ttft-question 64 -reps 5 -ttft-disk=false -memory-cache-gib 8 2>"$OUT/ttft.err" | grep --line-buffered "^|" | tee -a "$R"
B="./bin/bench -backend xla -dtype bf16 -random-weights -decode 48 -reps 2"
for m in llama-2-7b:LLaMA-2-7B llama-3-8b:LLaMA-3-8B; do
  timeout 120 $B -model gpu-run/models/${m%%:*} -label "${m##*:} shape" -lens $LENS 2>>"$OUT/speed.err" \
    | grep --line-buffered -E "^(\| LLaMA|<!-- measured)" | tee -a "$R"
done
for m in llama-2-7b:LLaMA-2-7B llama-3-8b:LLaMA-3-8B; do
  timeout 150 python3 scripts/gpu/hf_bench.py gpu-run/models/${m%%:*} $LENS 32 bf16 "${m##*:} shape" random 2>>"$OUT/hf.err" \
    | grep --line-buffered "^|" | tee -a "$R"
done
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f"; }; done
exit 0
