#!/usr/bin/env bash
# Session 4's figures (run from the repository root on the GPU machine, after scripts/gpu/build.sh):
#   STEPS="check ttft"  correctness through XLA (fused attention over a cut context vs plain, f32 goldens,
#                       greedy tokens of the bundled model against the CPU's) and the TTFT of an 8K fixed
#                       context + 64-token question, session-3 engine (OLD env) against this one, traced;
#   STEPS="speed hf"    LLaMA-2-7B and LLaMA-3-8B decode/prefill, this engine then transformers, one call.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
STEPS=${STEPS:-check ttft}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
OLD="SQLLM_SYNC_EXECUTE=1 SQLLM_NO_PIPELINE=1 SQLLM_NO_SPLITK=1"
LENS=${LENS:-4096,16384,32768}
if has check; then
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 300 ../bin/llama.test \
     -test.run 'TestStepKindsAgree|TestGoldenFloat32' -test.v 2>&1 | tee "$OUT/check.txt" | grep -E "^(---|ok|FAIL|PASS)|cut context" )
  OUT=$OUT bash scripts/gpu/greedy_check.sh
fi
if has ttft; then
  T="-lens= -ttft-context 8192 -ttft-question 64 -reps 5"
  for v in old new; do
    env=""; [ $v = old ] && env=$OLD
    env $env timeout 150 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights \
      -label "LLaMA-2-7B shape, $v" $T -memory-cache-gib 8 2>>"$OUT/ttft.err" | grep "^| LLaMA"
  done
  for dt in f32 bf16; do
    timeout 150 ./bin/bench -backend xla -dtype $dt -label "bundled model" $T 2>>"$OUT/ttft.err" | grep "^| bundled"
  done
  lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so)
  CUPTI_TRACE_OUT=/tmp/ttft.trace CUPTI_TRACE_DRIVER=1 CUDA_INJECTION64_PATH=$lib \
    timeout 150 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "7b traced" \
      $T -ttft-disk=false 2>>"$OUT/ttft.err" | grep "^| 7b"
  sleep 1
  ALL=1 python3 scripts/gpu/cupti/analyze.py /tmp/ttft.trace 100 "$OUT/ttft.tsv" > "$OUT/ttft.txt" 2>&1
  grep -E "^step" "$OUT/ttft.txt" | tail -4
  sed -n '/^median step/,$p' "$OUT/ttft.txt" | head -12
fi
B="./bin/bench -backend xla -dtype bf16 -random-weights -decode 48 -reps 2"
if has speed; then
  timeout 200 $B -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" -lens $LENS 2>>"$OUT/speed.err" | grep -E "^(\| LLaMA|<!-- measured)"
  timeout 200 $B -model gpu-run/models/llama-3-8b -label "LLaMA-3-8B shape" -lens $LENS 2>>"$OUT/speed.err" | grep -E "^(\| LLaMA|<!-- measured)"
fi
if has hf; then
  timeout 200 python3 scripts/gpu/hf_bench.py gpu-run/models/llama-2-7b $LENS 32 bf16 "LLaMA-2-7B shape" random 2>"$OUT/hf7.err" | grep "^|"
  timeout 200 python3 scripts/gpu/hf_bench.py gpu-run/models/llama-3-8b $LENS 32 bf16 "LLaMA-3-8B shape" random 2>"$OUT/hf8.err" | grep "^|"
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; grep -v "^trace:" "$f" | tail -3; }; done
exit 0
