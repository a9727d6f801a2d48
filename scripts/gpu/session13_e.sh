#!/usr/bin/env bash
# Session 13: the engine at LLaMA-3-8B 128K (130,000 tokens), the grouped-query decode's kept keys through the paged
# kernel (the default since session 13) and through XLA's gathers (SQLLM_SQUEEZE_PAGED=0), one process each.
. scripts/gpu/preamble.sh
engine_ab SQLLM_SQUEEZE_PAGED "auto 0" llama-3-8b LLaMA-3-8B 130000 2 200
exit 0
