#!/usr/bin/env bash
# Session 13, the grouped-query decode's kept keys: XLA's gathers (SQLLM_SQUEEZE_PAGED=0, the engine's choice before)
# against the paged kernel, now round 14's pf2 for 2-8 rows a KV head and taken by PagedAuto up to 8 rows once
# ProbePaged passed (the default). (1) The engine at the LLaMA-3-8B shape, 32K, each way in its own process (dense in
# each too). (2) The attention benchmark's decode at 8B 32K and 128K with ten calls a repetition.
. scripts/gpu/preamble.sh
engine_ab SQLLM_SQUEEZE_PAGED "0 auto" llama-3-8b LLaMA-3-8B 32768
echo "== decode, batch 10" | tee -a "$R"
(cd llama && timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
  -attnbench.shapes 8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false \
  -attnbench.variants empty,dense,sq-engine-sel,sq-engine-paged-sel -attnbench.cluster=false \
  -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1; echo "rc=$?" | tee -a "$R")
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
exit 0
