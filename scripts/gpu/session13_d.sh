#!/usr/bin/env bash
# Session 13, last call. (1) The paged pf2 kernel's full IR diff between two shape sets (pallas_paged.py ir_diff,
# written whole to paged_pf2_ir_diff.txt). (2) The engine at LLaMA-3-8B 32K, XLA's gathers against the paged kernel
# again (a second process each: session 13_c had 6.39 against 5.62 ms a token). (3) The LLaMA-2-7B decode with ten
# calls a repetition (the engine's default: paged kernel and selection kernels) against dense.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
OUT=$OUT timeout 60 python3 -c "import sys; sys.path.insert(0, 'scripts/gpu'); import pallas_paged as pp; pp.ir_diff('pf2', 1)" > "$OUT/irdiff.log" 2>&1
echo "ir diff rc=$? lines $(wc -l < "$OUT/paged_pf2_ir_diff.txt")" | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24 -cache-dir -"
for p in auto 0; do
  echo "== 8B 32K, SQLLM_SQUEEZE_PAGED=$p" | tee -a "$R"
  if [ $p = auto ]; then unset SQLLM_SQUEEZE_PAGED; else export SQLLM_SQUEEZE_PAGED=$p; fi
  timeout 150 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 32768 2>>"$OUT/b8.err" | grep "^| LLaMA" | tee -a "$R"
done
unset SQLLM_SQUEEZE_PAGED
echo "== 7B decode, batch 10" | tee -a "$R"
(cd llama && timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
  -attnbench.shapes 7b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
  -attnbench.variants empty,dense,sq-engine-paged-sel -attnbench.cluster=false \
  -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1; echo "rc=$?" | tee -a "$R")
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
exit 0
