#!/usr/bin/env bash
# Session 5: does launching a squeezed decode step's ~1,700 kernels through XLA command buffers (CUDA
# graphs) take the host out of the way? The squeezed step is host-bound (scripts/gpu/trace_squeeze.sh:
# 9.5 ms of GPU work, ~10 µs of host time per kernel). Runs bench -squeeze-budget 0.1 (LLaMA-2-7B shape,
# 32K) and the 8K+64 TTFT memory hit under each XLA_FLAGS setting of $FLAGS ("-" = the engine's default,
# command buffers off). Results are appended to $OUT/results.md as they come.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN --xla_gpu_graph_min_graph_size=1"
IFS='|' read -ra VARIANTS <<< "${VARIANTS:--|$CB}"
for v in "${VARIANTS[@]}"; do
  x=""; [ "$v" != "-" ] && x="$v"
  echo "XLA_FLAGS='$x'" | tee -a "$R"
  XLA_FLAGS="$x" timeout ${TSQ:-200} ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 ${HIER:-} \
    -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 40 -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" \
    -lens ${LENS:-32768} 2>>"$OUT/sq.err" | grep --line-buffered "^|" | tee -a "$R"
  [ -n "${NOTTFT:-}" ] || XLA_FLAGS="$x" timeout 100 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights \
    -label "LLaMA-2-7B shape" -lens= -ttft-context 8192 -ttft-question 64 -reps 5 -ttft-disk=false -memory-cache-gib 8 \
    2>>"$OUT/ttft.err" | grep --line-buffered "^| LLaMA" | tee -a "$R"
done
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
