#!/usr/bin/env bash
# Issue 7 / issue 3 figures on the GPU machine, in one device call (from the repository root, after
# scripts/gpu/prep.sh made gpu-run/): fused-vs-plain attention check, the bundled model's TTFT with a cached
# prefix and its speed, then LLaMA-2-7B and LLaMA-3-8B shapes (random weights) in this engine and in
# transformers on the same card. Markdown rows on stdout, logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/unpack.sh
STEPS=${STEPS:-check ttft tiny 7b 8b hf}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
if has check; then
  echo "== fused (cuDNN) vs plain attention, chunked vs one-shot; f32 goldens"
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 300 ../bin/llama.test \
     -test.run 'TestStepKindsAgree|TestGoldenFloat32|TestRandomWeightsOn' -test.v 2>&1 | tee "$OUT/check.txt" | grep -E "^(---|ok|FAIL|PASS)|fused_test" )
fi
if has ttft; then
  echo "== TTFT, bundled model, 8K fixed context + 64-token question"
  for dt in bf16 f32; do timeout 300 ./bin/bench -backend xla -dtype $dt -lens "" -ttft-context 8192 -ttft-question 64 -reps 5 2>>"$OUT/ttft.err"; done
fi
if has tiny; then
  echo "== bundled model speed"
  timeout 300 ./bin/bench -backend xla -dtype bf16 -lens 1024,4096,8192 -decode 64 2>>"$OUT/tiny.err"
fi
if has 7b; then
  echo "== LLaMA-2-7B shape, random weights"
  timeout 400 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "LLaMA-2-7B shape" \
    -lens ${LENS7:-4096,16384,32768} -decode 32 -reps 2 2>>"$OUT/7b.err"
  timeout 200 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "LLaMA-2-7B shape" \
    -lens "" -ttft-context 8192 -ttft-question 64 -reps 3 -memory-cache-gib 8 2>>"$OUT/7b.err"
fi
if has 8b; then
  echo "== LLaMA-3-8B shape, random weights"
  timeout 500 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-3-8b -random-weights -label "LLaMA-3-8B shape" \
    -lens ${LENS8:-4096,16384,32768,131040} -decode 32 -reps 2 2>>"$OUT/8b.err"
fi
if has hf; then
  echo "== transformers"
  timeout 300 python3 scripts/gpu/hf_bench.py gpu-run/models/llama-2-7b ${LENS7:-4096,16384,32768} 32 bf16 "LLaMA-2-7B shape" random 2>"$OUT/hf7.err"
  timeout 400 python3 scripts/gpu/hf_bench.py gpu-run/models/llama-3-8b ${LENS8:-4096,16384,32768,131040} 32 bf16 "LLaMA-3-8B shape" random 2>"$OUT/hf8.err"
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -5 "$f"; }; done
exit 0
