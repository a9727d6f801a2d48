#!/usr/bin/env bash
# Session 7's second call: the remainder (SqueezeOptions.Remainder: dropped clusters attended through their
# centroids and mean values) through XLA — TestRemainderDecode in the background on the same GPU — and
# tinycode_lcc (all 150 items) for dense, sq70r, sq90r (calibrated threshold + remainder) and sq90br (fixed 10%
# budget + remainder), one process each (scripts/gpu/lcc_squeezed.sh). Predictions come back in $OUT/lcc.tgz.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && SQLLM_TEST_BACKEND=xla timeout 420 ../bin/llama.test \
   -test.run '^TestRemainderDecode$' -test.v > "$OUT/remainder_test.txt" 2>&1; echo "TestRemainderDecode rc=$?" >> "$OUT/remainder_test.txt" ) &
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  CONFIGS="${CONFIGS:-dense sq70r sq90r sq90br}" LCC_TIMEOUT=${LCC_TIMEOUT:-420} bash scripts/gpu/lcc_squeezed.sh ) 2>&1 | tee -a "$R"
wait
grep -E "_test.go|^--- |rc=" "$OUT/remainder_test.txt" | cut -c1-400 | tee -a "$R"
exit 0
