#!/usr/bin/env bash
# Session 14: the engine at LLaMA-3-8B 130,000 tokens, the decode step's input tokens in the paged kernel's launch
# with the merge kernel (the defaults since session 14) against XLA's dense part (SQLLM_SQUEEZE_PAGEDSEG=0), one
# process each (as session13_e.sh).
. scripts/gpu/preamble.sh
engine_ab SQLLM_SQUEEZE_PAGEDSEG "auto 0" llama-3-8b LLaMA-3-8B 130000 2 230
exit 0
