#!/usr/bin/env bash
# tinycode_lcc (150 items) on the GPU: dense and Squeezed Attention (fixed budget) configs, greedy, first line
# scored with LongBench's code_sim. Needs gpu-run/data/tinycode_lcc/dev.jsonl (a copy of
# ../shared/evals/tinycode_lcc/dev.jsonl) and the binaries of scripts/gpu/build.sh. Results under $OUT; one
# config at a time, so a run cut short still returns the configs it finished.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for c in ${CONFIGS:-dense sq70 sq90}; do
  start=$(date +%s)
  ./bin/longbench -backend xla -dtype f32 -data gpu-run/data -tasks tinycode_lcc -configs "$c" \
    -out "/tmp/lb-$c" -quiet ${LIMIT:+-limit $LIMIT} >/dev/null 2>"$OUT/$c.err"
  echo "$c: rc=$? in $(( $(date +%s) - start ))s"; grep "tinycode_lcc" "/tmp/lb-$c/results.md"
  mkdir -p "$OUT/$c"; cp "/tmp/lb-$c/results.csv" "$OUT/$c/" 2>/dev/null
  cp "/tmp/lb-$c/preds/$c/tinycode_lcc.jsonl" "$OUT/$c/" 2>/dev/null
done
