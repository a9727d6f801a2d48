#!/usr/bin/env bash
# Session 15, call 11: the engine's decode with the paged kernel's new layout (squeeze.pagedLayout) against the former
# one (SQLLM_TEST_OLDLAYOUT=1 on the same temporary build as call 10), LLaMA-2-7B and LLaMA-3-8B shapes at 32K, one
# process each. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
engine_ab SQLLM_TEST_OLDLAYOUT "1 auto" llama-2-7b LLaMA-2-7B 32768 3 120
engine_ab SQLLM_TEST_OLDLAYOUT "1 auto" llama-3-8b LLaMA-3-8B 32768 3 120
exit 0
