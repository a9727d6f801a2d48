#!/usr/bin/env bash
# Session 12, second call. (1) LLaMA-2-7B at 130,000 tokens in the engine with the per-layer KV writes, without the
# disk cache (-cache-dir -: the first call's process was killed for host memory while writing the 68 GB disk entry,
# which Prefix.Blobs held twice; this machine's 64 GB disk could not hold the entry anyway), dense and squeezed.
# (2) Pallas round 15: the cluster-score kernels in base 2 (scripts/gpu/pallas_scores.py ROUND=15), exported.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
echo "== 7B 130000 tokens, default memory fraction, no disk cache" | tee -a "$R"
/usr/bin/time -f "wall %e s, max RSS %M KB" timeout ${T1:-300} ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 \
  -squeeze-input 512 -decode 32 -reps 1 -memory-cache-gib 100 -cache-dir - -model gpu-run/models/llama-2-7b -label LLaMA-2-7B \
  -lens 130000 2>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$R"
tail -4 "$OUT/b7.err" | cut -c1-400 | tee -a "$R"
echo "== Pallas round 15" | tee -a "$R"
ROUND=15 EXPORT=1 OUT=$OUT timeout ${T2:-240} python3 scripts/gpu/pallas_scores.py > "$OUT/pallas.log" 2>&1
echo "pallas rc=$?" | tee -a "$R"
tail -12 "$OUT/pallas.log" | cut -c1-300
[ -d "$OUT/kernels" ] && tar czf "$OUT/kernels.tgz" -C "$OUT" kernels && rm -rf "$OUT/kernels"
exit 0
