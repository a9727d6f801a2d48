#!/usr/bin/env bash
# Session 15, call 13: the committed code's decode cells with the variants' repetitions interleaved in each process
# (-attnbench.interleave: dense, XLA's scores + kernel A, the lookup kernel, A B C A B C …, 9 timed repetitions of
# ten calls), two processes. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
for run in 1 2; do
  echo "== interleaved, process $run" | tee -a "$R"
  (cd llama && timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.reps 9 -attnbench.interleave -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 \
    -attnbench.phases decode -attnbench.check=false -attnbench.cluster=false \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "FAIL|panic" "$OUT/ab.log" | head -4 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
done
exit 0
