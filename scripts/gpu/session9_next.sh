#!/usr/bin/env bash
# Prepared in session 8 for the next GPU call (not run yet): what the paged kernel's default needs, and what the
# 128K clustering change (a68dca6) has not had. About 9 minutes; each part appends to $OUT/results.md.
# 1. The LLaMA-3-8B shape at 32K in the engine: squeezed decode with XLA's gathers against the paged kernel
#    (SQLLM_SQUEEZE_PAGED=1, with the barrier), one after the other on the same card. If it is at least as fast as
#    the gathers here too (the 7B shape: 7.21 against 8.13 ms on an H200), turn squeeze.Paged on by default.
# 2. The lookup alone, all-pairs boundary (default) against the search in passes (SQLLM_SQUEEZE_PASSES=1), 7B 32K:
#    the lookup is now nearly all of the squeezed attention time (115 of 126.5 µs a layer).
# 3. The LLaMA-3-8B shape at 128K (130,000 tokens): clustering a few KV heads per call (headBatch) should now fit.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
( . scripts/gpu/xla-env.sh >/dev/null 2>&1
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
  echo "== 8B 32K, gathers"; timeout 150 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 32768 2>>"$OUT/b8.err" | grep "^| LLaMA"
  echo "== 8B 32K, paged"; SQLLM_SQUEEZE_PAGED=1 timeout 150 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 32768 2>>"$OUT/b8p.err" | grep "^| LLaMA"
  cd llama && for p in "" 1; do echo "== lookup, SQLLM_SQUEEZE_PASSES=$p"
    SQLLM_SQUEEZE_PASSES=$p timeout 80 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.phases decode \
      -attnbench.shapes 7b -attnbench.ctx 32768 -attnbench.variants empty,dense,lookup-new,sq-engine,sq-engine-paged \
      -attnbench.cluster=false -attnbench.check=false 2>&1 | grep -E "ms per call" ; done
  cd .. && echo "== 8B 128K"; timeout 200 $B -model gpu-run/models/llama-3-8b -label LLaMA-3-8B -lens 130000 2>>"$OUT/b8l.err" | grep "^| LLaMA"
) 2>&1 | tee -a "$R"
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
