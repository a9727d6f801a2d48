#!/usr/bin/env bash
# Session 4: asynchronous execution + pipelined greedy decoding + split-K value weighting, against the
# session-3 engine in the same binary (SQLLM_SYNC_EXECUTE=1 SQLLM_NO_PIPELINE=1 SQLLM_NO_SPLITK=1), on
# the LLaMA-2-7B and LLaMA-3-8B shapes; correctness through XLA (goldens, DecodeGreedy vs AppendGreedy);
# CUPTI step summaries of the new decode (scripts/gpu/cupti). Outputs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
STEPS=${STEPS:-check 7b 8b trace ttft}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
OLD="SQLLM_SYNC_EXECUTE=1 SQLLM_NO_PIPELINE=1 SQLLM_NO_SPLITK=1"
if has check; then
  echo "== through XLA: goldens, pipelined decode, step kinds"
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 200 ../bin/llama.test \
     -test.run 'TestGoldenFloat32|TestDecodeGreedy|TestAppendGreedy|TestStepKindsAgree|TestWeightValuesSplit' -test.v 2>&1 \
     | tee "$OUT/check.txt" | grep -E "^(---|ok|FAIL|PASS)" )
fi
B="./bin/bench -backend xla -dtype bf16 -random-weights -decode 48 -reps 2"
for m in 7b 8b; do
  has $m || continue
  dir=gpu-run/models/llama-2-7b; [ $m = 8b ] && dir=gpu-run/models/llama-3-8b
  for v in old new; do
    env=""; [ $v = old ] && env=$OLD
    echo "== $m $v"
    env $env timeout 240 $B -model $dir -label "$m $v" -lens ${LENS:-4096,16384,32768} 2>>"$OUT/$m.err" | grep -E "^(\| $m|<!-- measured)"
  done
done
if has trace; then
  lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so)
  for m in llama-2-7b llama-3-8b; do
    for len in 4096 32768; do
      CUPTI_TRACE_OUT=/tmp/$m.$len.trace CUPTI_TRACE_DRIVER=1 CUDA_INJECTION64_PATH=$lib \
        timeout 200 ./bin/bench -backend xla -dtype bf16 -random-weights -decode 48 -reps 1 -model gpu-run/models/$m -label "$m traced" -lens $len 2>>"$OUT/trace.err" | grep "^| $m"
      sleep 1
      python3 scripts/gpu/cupti/analyze.py /tmp/$m.$len.trace 100 "$OUT/$m.$len.tsv" > "$OUT/$m.$len.txt" 2>&1
      head -16 "$OUT/$m.$len.txt"
    done
  done
fi
if has ttft; then
  for v in old new; do
    env=""; [ $v = old ] && env=$OLD
    echo "== TTFT 7b $v"
    env $env timeout 200 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "7b $v" \
      -lens "" -ttft-context 8192 -ttft-question 64 -reps 3 -memory-cache-gib 8 2>>"$OUT/ttft.err" | grep "^|"
  done
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -4 "$f"; }; done
exit 0
