#!/usr/bin/env bash
# Engine-core checks on the GPU machine (run from the repository root through the device tool, with bin/ built
# by scripts/gpu/build.sh and gpu-run/expected/ holding the CPU outputs). Writes logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
bash scripts/gpu/unpack.sh

echo "== 1. CLI on the XLA backend, plugin found without any environment set"
env -u LD_LIBRARY_PATH -u XLA_FLAGS -u GOMLX_BACKEND ./bin/generate -backend auto -dtype f32 -max-tokens 48 \
  >"$OUT/default_xla.txt" 2>"$OUT/default_xla.err"; echo "rc=$?"; cat "$OUT/default_xla.err"
for f in gpu-run/expected/*.txt; do
  name=$(basename "$f" .txt)
  if [ "$name" != default ]; then
    ./bin/generate -backend xla -dtype f32 -max-tokens 48 -prompt-file "gpu-run/prompts/$name.prompt" \
      >"$OUT/${name}_xla.txt" 2>"$OUT/${name}_xla.err"
  fi
  if cmp -s "$f" "$OUT/${name}_xla.txt"; then echo "greedy $name: identical to CPU"; else echo "greedy $name: DIFFERS from CPU"; status=1; fi
done

echo "== 2. golden tests (transformers logits and greedy tokens) on XLA"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla ../bin/llama.test \
   -test.run 'TestGoldenFloat32|TestSegmentsMatchOneShot|TestBFloat16' -test.v 2>&1 | tee "$OUT/golden_xla.txt" | grep -E "^(---|===|ok|FAIL|PASS)|golden_test|runner_test" )

echo "== 3. speed: this engine (bf16, f32) and transformers (bf16) on the same card"
./bin/bench -backend xla -dtype bf16 -lens 1024,4096,8192 -decode 64 2>&1 | tee "$OUT/bench_bf16.md"
./bin/bench -backend xla -dtype f32 -lens 1024,4096,8192 -decode 64 2>&1 | tee "$OUT/bench_f32.md"
python3 scripts/gpu/hf_bench.py models/tinycode-llama-16m 1024,4096,8192 64 bf16 2>"$OUT/hf.err" | tee "$OUT/bench_hf.md"
exit $status
