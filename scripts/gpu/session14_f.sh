#!/usr/bin/env bash
# Session 14: (1) the every-key-kept check of the attention benchmark with the seg variant (session14_e.sh's check
# list lacked it). (2) The engine's squeezed decode, the dynamic segment in XLA's dense attention
# (SQLLM_SQUEEZE_PAGEDSEG=0) against in the paged kernel's launch (=1), LLaMA-2-7B and LLaMA-3-8B shapes at 32K, one
# process each, dense in each. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
(cd llama && timeout 120 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.shapes 7b,8b -attnbench.ctx 4096 -attnbench.phases decode -attnbench.check=true \
  -attnbench.variants empty,dense,sq-engine-paged-sel-seg -attnbench.cluster=false -attnbench.out "$OUT/check.md" > "$OUT/check.log" 2>&1
  echo "check rc=$?" | tee -a "$R")
grep -E "seg|sq-engine-paged-sel vs" "$OUT/check.md" | tee -a "$R"
engine_ab SQLLM_SQUEEZE_PAGEDSEG "0 1" llama-2-7b LLaMA-2-7B 32768
engine_ab SQLLM_SQUEEZE_PAGEDSEG "0 1" llama-3-8b LLaMA-3-8B 32768
exit 0
