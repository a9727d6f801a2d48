#!/usr/bin/env bash
# tinycode_lcc with the Squeezed Attention configs run side by side (one process each on the same GPU: the
# run is dominated by per-context clustering/calibration and XLA compilation, which use the host's cores).
# Each process stops after LCC_TIMEOUT seconds; the predictions made so far are kept (the rows are
# complete JSON lines) and can be scored later with the same command and -limit N.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
for c in ${CONFIGS:-sq70 sq90 sq50}; do
  ( start=$(date +%s)
    timeout ${LCC_TIMEOUT:-480} ./bin/longbench -backend xla -dtype f32 -data gpu-run/data -tasks tinycode_lcc -configs "$c" \
      -out "/tmp/lb-$c" -quiet >/dev/null 2>"$OUT/$c.err"
    echo "$c: rc=$? in $(( $(date +%s) - start ))s, $(wc -l < /tmp/lb-$c/preds/$c/tinycode_lcc.jsonl) items"
    mkdir -p "$OUT/$c"; cp /tmp/lb-$c/results.* "$OUT/$c/" 2>/dev/null
    cp "/tmp/lb-$c/preds/$c/tinycode_lcc.jsonl" "$OUT/$c/" 2>/dev/null ) &
done
wait
