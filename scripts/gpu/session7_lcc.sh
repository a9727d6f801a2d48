#!/usr/bin/env bash
# Session 7's first call: attention-mass selection through XLA (TestMassDecode, TestSqueezeKept), then
# tinycode_lcc (all 150 items) for sq70/sq90 (calibrated threshold) and sq70m/sq90m (attention mass) side by
# side, one process each (scripts/gpu/lcc_squeezed.sh). Predictions come back in $OUT/lcc.tgz.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 120 ../bin/llama.test \
   -test.run '^(TestMassDecode|TestSqueezeKept)$' -test.v 2>&1 | grep -E "_test.go|^--- |^(ok|FAIL|PASS)" | cut -c1-300 | tee -a "$R" )
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  CONFIGS="${CONFIGS:-sq70 sq70m sq90 sq90m}" LCC_TIMEOUT=${LCC_TIMEOUT:-400} bash scripts/gpu/lcc_squeezed.sh ) 2>&1 | tee -a "$R"
exit 0
