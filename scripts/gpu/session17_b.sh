#!/usr/bin/env bash
# Session 17, call 2: where a 512-token user input's squeezed attention goes, kernel by kernel (CUPTI timeline of the
# attention benchmark's input phase, 8 chained layers, sq-engine-sel-sk alone, no command buffers as the engine runs an
# input), at the four shapes. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
cupti_input "7B 32K input" 7b 32768 sq-engine-sel-sk 120
cupti_input "7B 128K input" 7b 131072 sq-engine-sel-sk 120
cupti_input "8B 32K input" 8b 32768 sq-engine-sel-sk 120
cupti_input "8B 128K input" 8b 131072 sq-engine-sel-sk 120

exit 0
