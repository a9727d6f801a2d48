#!/usr/bin/env bash
# Session 4: where a decode step's time goes. Builds the CUPTI tracer (scripts/gpu/cupti), runs the engine's
# decode of the LLaMA-2-7B and LLaMA-3-8B shapes at 4K under it, and summarises each step's kernels
# (scripts/gpu/cupti/analyze.py). Also dumps the 7B run's optimised HLO (XLA_FLAGS --xla_dump_to) and
# prints the new two-size copy-bandwidth probe. Outputs under $OUT: trace summaries (*.txt), the median
# step's kernel list (*.tsv), hlo.tgz.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so) || { echo "cupti build failed"; exit 1; }
B="./bin/bench -backend xla -dtype bf16 -random-weights -decode ${DECODE:-48} -reps 1"
for m in ${MODELS:-llama-2-7b llama-3-8b}; do
  echo "== $m"
  dump=""
  [ "$m" = llama-2-7b ] && dump="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text"
  XLA_FLAGS="$dump ${EXTRA_FLAGS:-}" CUPTI_TRACE_OUT=/tmp/$m.trace CUPTI_TRACE_DRIVER=1 CUDA_INJECTION64_PATH=$lib \
    timeout 200 $B -model gpu-run/models/$m -label "$m" -lens 4096 2>"$OUT/$m.err" | grep -E "^(\| $m|<!--)"
  sleep 1
  ls -la /tmp/$m.trace | awk '{print $5, $9}'
  python3 scripts/gpu/cupti/analyze.py /tmp/$m.trace 100 "$OUT/$m.tsv" > "$OUT/$m.txt" 2>&1
  head -40 "$OUT/$m.txt"
done
if [ -d /tmp/dump ]; then
  ls /tmp/dump | wc -l
  (cd /tmp/dump && tar czf "$OUT/hlo.tgz" $(ls | grep -E 'after_optimizations\.txt$|after_optimizations-buffer-assignment\.txt$' | head -200))
  ls -la "$OUT/hlo.tgz"
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f"; }; done
exit 0
