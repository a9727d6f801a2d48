#!/usr/bin/env bash
# Session 3's last speed call: the LLaMA-2-7B decode at 4K under XLA's command-buffer (CUDA graph)
# settings, the LLaMA-3-8B shape beside transformers, and the f32 goldens through XLA.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
B="./bin/bench -backend xla -dtype bf16 -random-weights -decode 32 -reps 2"
for f in "" "--xla_gpu_enable_command_buffer=" "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN --xla_gpu_graph_min_graph_size=1"; do
  echo "== LLaMA-2-7B, XLA_FLAGS='$f'"
  XLA_FLAGS="$f" timeout 100 $B -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" -lens 4096 2>>"$OUT/cb.err" | grep "^| LLaMA"
done
echo "== LLaMA-3-8B"
timeout 200 $B -model gpu-run/models/llama-3-8b -label "LLaMA-3-8B shape" -lens 4096,16384,32768 2>>"$OUT/8b.err"
timeout 240 python3 scripts/gpu/hf_bench.py gpu-run/models/llama-3-8b 4096,16384,32768 32 bf16 "LLaMA-3-8B shape" random 2>"$OUT/hf8.err"
echo "== goldens through XLA"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 120 ../bin/llama.test \
   -test.run 'TestGoldenFloat32' -test.v 2>&1 | tee "$OUT/golden.txt" | grep -E "^(---|ok|FAIL|PASS)" )
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f"; }; done
exit 0
