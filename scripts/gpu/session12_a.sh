#!/usr/bin/env bash
# Session 12, first call. (1) LLaMA-2-7B at 130,000 tokens in the engine with the per-layer KV writes (writeKV frees
# each old layer buffer as soon as its new one is written; sessions 10 and 11 ran out of memory here with one write
# executable for all layers), at the default memory fraction, dense and squeezed, device memory sampled each second.
# (2) Pallas round 14 (scripts/gpu/pallas_paged.py): the paged kernel with its blocks prefetched, checked and timed
# against the engine's, every variant's configs exported (kernels.tgz).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/mem.csv" 2>&1 &
SMI=$!
echo "== 7B 130000 tokens, default memory fraction" | tee -a "$R"
/usr/bin/time -f "wall %e s, max RSS %M KB" timeout ${T1:-280} ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 \
  -squeeze-input 512 -decode 32 -reps 1 -memory-cache-gib 100 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B \
  -lens 130000 2>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$R"
kill $SMI 2>/dev/null
echo "peak device memory used (MiB): $(sort -t, -k2 -n "$OUT/mem.csv" | tail -1)" | tee -a "$R"
tail -4 "$OUT/b7.err" | cut -c1-400 | tee -a "$R"
echo "== Pallas round 14" | tee -a "$R"
EXPORT=1 OUT=$OUT timeout ${T2:-270} python3 scripts/gpu/pallas_paged.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
tail -5 "$OUT/pallas.log" | cut -c1-300
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
exit 0
