#!/usr/bin/env bash
# Session 7's third call: TestRemainderDecode through XLA (in the background, binaries unpacked first),
# tinycode_lcc (all 150 items) for sq95r, sq95br, sq80r and sq50r (one process each), then the remainder's
# cost inside the engine on the LLaMA-2-7B shape at 32K (bench -squeeze-budget 0.1 -squeeze-remainder: dense,
# squeezed and squeezed with the remainder from one prefilled context), alone on the GPU.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 300 ../bin/llama.test \
   -test.run '^TestRemainderDecode$' -test.v > "$OUT/remainder_test.txt" 2>&1; echo "TestRemainderDecode rc=$?" >> "$OUT/remainder_test.txt" ) &
# lcc_squeezed.sh without its unpacking: rewriting bin/llama.test while the test runs fails ("Text file busy").
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  sed 's#^bash scripts/gpu/unpack.sh#:#' scripts/gpu/lcc_squeezed.sh > /tmp/lcc_noup.sh
  CONFIGS="${CONFIGS:-sq95r sq95br sq80r sq50r}" LCC_TIMEOUT=${LCC_TIMEOUT:-200} bash /tmp/lcc_noup.sh ) 2>&1 | tee -a "$R"
wait
grep -E "_test.go|^--- |rc=" "$OUT/remainder_test.txt" | cut -c1-400 | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  timeout 200 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-remainder -squeeze-input 512 \
    -decode 32 -reps 2 -memory-cache-gib 40 -model gpu-run/models/llama-2-7b -label "LLaMA-2-7B shape" -lens 32768 \
    2>>"$OUT/sq7b.err" | grep "^|" | tee -a "$R" )
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
