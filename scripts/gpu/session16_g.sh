#!/usr/bin/env bash
# Session 16, call 11: the issue-4 cells measured with -attnbench.slope (per layer = (call of 64 layers − call of 32
# layers) / 32, no empty call subtracted) beside the (call − empty call) / 32 that every session so far quoted (both
# from the same process: the report's "ms per call" column holds the 32-layer call). Ten calls a repetition.
# Decode in two processes, the user input (512 tokens) in one. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
slope() {
  echo "== $1" | tee -a "$R"
  (cd llama && timeout 240 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.slope=true -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases "$2" \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants "$3" -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "FAIL|panic" "$OUT/ab.log" | head -4 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*(decode|input [0-9]+) \| [a-z]" "$OUT/ab.md" | tee -a "$R"  # (call 11 lost the input rows to
  # a pattern without the input's length; call 12 ran that process again by hand, the log kept)
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}
slope "decode, process 1" decode empty,dense,sq-engine-paged-sel-seg-look
slope "input, process 1" input empty,dense-fused,sq-engine-sel-sk
slope "decode, process 2" decode empty,dense,sq-engine-paged-sel-seg-look
exit 0
