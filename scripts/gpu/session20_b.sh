#!/usr/bin/env bash
# Session 20, call 6: a 512-token user input's squeezed attention kernel by kernel on this build (CUPTI timeline of
# the attention benchmark's input phase, 8 chained layers, sq-engine-sel-sk alone, no command buffers as the engine
# runs an input), at LLaMA-2-7B 128K and 32K: where the last microseconds to the bar could come from.
# Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
cupti_input "7B 128K input" 7b 131072 sq-engine-sel-sk 150
cupti_input "7B 32K input" 7b 32768 sq-engine-sel-sk 150
exit 0
