#!/usr/bin/env bash
# Prefix-cache checks on the GPU machine (after scripts/gpu/build.sh): golden tests on XLA, time to first
# token for an 8K fixed context + 64-token question (cold, memory hit, disk hit), and the CLI's cached answers
# against uncached ones. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
status=0
echo "== golden and prefix tests on XLA"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla ../bin/llama.test \
   -test.run 'TestGoldenFloat32|TestSegmentsMatchOneShot|TestBFloat16|TestPrefixMatchesOneShot' -test.v 2>&1 \
   | tee "$OUT/golden_xla.txt" | grep -E "^(--- |ok|FAIL|PASS)|golden_test.go|runner_test.go" ) || status=1
echo "== time to first token"
./bin/bench -backend xla -dtype bf16 -lens "" -ttft-context 8192 -ttft-question 64 -reps 5 2>&1 | grep -v '^<!--' | tee "$OUT/ttft_bf16.md"
./bin/bench -backend xla -dtype f32 -lens "" -ttft-context 8192 -ttft-question 64 -reps 5 2>&1 | grep -v '^<!--' | tee "$OUT/ttft_f32.md"
echo "== CLI: cached answers equal uncached ones"
export SQLLM_CACHE_DIR=/tmp/sqllm-cache; rm -rf "$SQLLM_CACHE_DIR"
q=$'    def _print_Foo(self, expr):\n'
for run in cold disk nocache; do
  flag=""; [ $run = nocache ] && flag=-no-cache
  ./bin/generate -backend xla -dtype f32 -max-tokens 48 -context-file gpu-run/prompts/lcc000.prompt -prompt "$q" $flag \
    >"$OUT/cli_$run.txt" 2>"$OUT/cli_$run.err"; grep -E "fixed context|prompt:" "$OUT/cli_$run.err"
done
cmp -s "$OUT/cli_cold.txt" "$OUT/cli_nocache.txt" && cmp -s "$OUT/cli_disk.txt" "$OUT/cli_nocache.txt" \
  && echo "cached (computed, disk hit) and uncached answers identical" || { echo "cached answers DIFFER"; status=1; }
exit $status
