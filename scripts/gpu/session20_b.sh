#!/usr/bin/env bash
# Session 20, call 6: a 512-token user input's squeezed attention kernel by kernel on this build (CUPTI timeline of
# the attention benchmark's input phase, 8 chained layers, sq-engine-sel-sk alone, no command buffers as the engine
# runs an input), at LLaMA-2-7B 128K and 32K: where the last microseconds to the bar could come from.
# Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
unit_in() { # LABEL SHAPE CTX VARIANT
  echo "== $1" | tee -a "$R"
  (cd llama && CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 150 ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes "$2" -attnbench.ctx "$3" \
    -attnbench.phases input -attnbench.check=false -attnbench.variants "$4" -attnbench.cluster=false -attnbench.slope=false \
    -attnbench.layers 8 -attnbench.reps 300 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  python3 scripts/gpu/cupti/units.py /tmp/t.trace 100 > /tmp/u.txt
  grep -c "^## " /tmp/u.txt | tee -a "$R"  # segments; the last is the timed calls
  awk '/^## /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' /tmp/u.txt | grep -E "^unit span|^## |^\| [0-9]+ \|" | head -60 | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
}
unit_in "7B 128K input" 7b 131072 sq-engine-sel-sk
unit_in "7B 32K input" 7b 32768 sq-engine-sel-sk
exit 0
