#!/usr/bin/env bash
# Session 4, second call: greedy tokens of the bundled model through XLA (asynchronous execution, pipelined
# decoding) against the CPU's, the f32 goldens, a CUPTI trace of the LLaMA-2-7B TTFT (8K fixed context +
# 64-token question, every step listed), and XLA command buffers on/off now that steps are pipelined.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
STEPS=${STEPS:-greedy golden ttft cmdbuf}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
if has greedy; then
  echo "== greedy tokens, bundled model, f32, XLA vs CPU"
  OUT=$OUT bash scripts/gpu/greedy_check.sh
fi
if has golden; then
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 240 ../bin/llama.test \
     -test.run 'TestGoldenFloat32' -test.v 2>&1 | tee "$OUT/golden.txt" | grep -E "^(---|ok|FAIL|PASS)" )
fi
if has ttft; then
  lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so)
  CUPTI_TRACE_OUT=/tmp/ttft.trace CUPTI_TRACE_DRIVER=1 CUDA_INJECTION64_PATH=$lib SQLLM_TRACE=1 \
    timeout 200 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "7b traced" \
      -lens "" -ttft-context 8192 -ttft-question 64 -reps 3 -memory-cache-gib 8 -ttft-disk=false 2>"$OUT/ttft.err" | grep "^| 7b"
  sleep 1
  grep -E "^trace: (memory|disk|computed)" "$OUT/ttft.err" | tail -4
  ALL=1 python3 scripts/gpu/cupti/analyze.py /tmp/ttft.trace 100 "$OUT/ttft.tsv" > "$OUT/ttft.txt" 2>&1
  grep -E "^step" "$OUT/ttft.txt" | tail -8
  sed -n '/^median step/,$p' "$OUT/ttft.txt" | head -24
fi
if has cmdbuf; then
  CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
  for m in llama-2-7b llama-3-8b; do
    for v in off on; do
      f=""; [ $v = on ] && f=$CB
      XLA_FLAGS="$f" timeout 150 ./bin/bench -backend xla -dtype bf16 -random-weights -decode 48 -reps 2 \
        -model gpu-run/models/$m -label "$m cmdbuf $v" -lens 4096,32768 2>>"$OUT/cmdbuf.err" | grep "^| $m"
    done
  done
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; grep -v "^trace:" "$f" | tail -3; }; done
exit 0
