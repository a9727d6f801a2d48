#!/usr/bin/env bash
# Session 5: (1) TestHierarchicalPrefix through XLA with the selection searched in passes and/or the split-K
# values product off (SQLLM_SQUEEZE_PASSES, SQLLM_NO_SPLITK), to see which (if any) moves its every-key-kept
# error; (2) the squeezed decode step traced with command buffers for small steps (trace_squeeze.sh, flat
# index only).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
for v in "SQLLM_SQUEEZE_PASSES=1 SQLLM_NO_SPLITK=1" "SQLLM_NO_SPLITK=1" "SQLLM_SQUEEZE_PASSES=1"; do
  echo "== $v" | tee -a "$R"
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && env $v SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test \
     -test.run 'TestHierarchicalPrefix' -test.v 2>&1 | grep -E "hier_test|^--- " | cut -c1-400 | tee -a "$R" )
done
HIER= bash scripts/gpu/trace_squeeze.sh | tee -a "$R"
exit 0
