#!/usr/bin/env bash
# Session 13, the grouped-query decode's kept keys: XLA's gathers (SQLLM_SQUEEZE_PAGED=0, the engine's choice before)
# against the paged kernel, now round 14's pf2 for 2-8 rows a KV head and taken by PagedAuto up to 8 rows once
# ProbePaged passed (the default). (1) The engine at the LLaMA-3-8B shape, 32K, each way in its own process (dense in
# each too). (2) The attention benchmark's decode at 8B 32K and 128K with ten calls a repetition.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -cache-dir -"
for p in 0 auto; do
  echo "== 8B 32K, SQLLM_SQUEEZE_PAGED=$p" | tee -a "$R"
  if [ $p = auto ]; then unset SQLLM_SQUEEZE_PAGED; else export SQLLM_SQUEEZE_PAGED=$p; fi
  timeout 150 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 32768 2>>"$OUT/b8.err" | grep "^| LLaMA" | tee -a "$R"
done
unset SQLLM_SQUEEZE_PAGED
echo "== decode, batch 10" | tee -a "$R"
(cd llama && timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
  -attnbench.shapes 8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
  -attnbench.variants empty,dense,sq-engine-sel,sq-engine-paged-sel -attnbench.cluster=false \
  -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1; echo "rc=$?" | tee -a "$R")
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
exit 0
