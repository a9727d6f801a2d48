#!/usr/bin/env bash
# Session 17, call 9 (it ran on an H100; the first process ran past its 300 s limit and printed nothing): the committed code against issue 4's bar in one process (decode and a 512-token input, the four
# shapes, slope, ten calls a repetition, the engine's variants); then kernel P with 2 row splits at LLaMA-3-8B 32K
# (SQLLM_SCORES_SPLITS=0,2; the rule gives 6) against the rule, CUPTI per call. Build first (here):
# bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
echo "== committed code, decode and input" | tee -a "$R"
(cd llama && timeout 300 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
  -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode,input \
  -attnbench.check=false -attnbench.cluster=false -attnbench.variants dense,dense-fused,sq-engine-paged-sel-seg-look,sq-engine-sel-sk \
  -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
grep -E "^\| LLaMA.*(decode|input [0-9]+) \| [a-z]" "$OUT/ab.md" | tee -a "$R"
rm -f "$OUT/ab.md" "$OUT/ab.log"
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so 2>/dev/null) || { echo "cupti build failed" | tee -a "$R"; exit 0; }
for s in 0,0 0,2 0,0 0,2; do
  (cd llama && SQLLM_SCORES_SPLITS=$s CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 90 ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes 8b -attnbench.ctx 32768 \
    -attnbench.phases input -attnbench.check=false -attnbench.variants sq-engine-sel-sk -attnbench.cluster=false -attnbench.slope=false \
    -attnbench.layers 8 -attnbench.reps 100 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
  python3 scripts/gpu/cupti/units.py /tmp/t.trace 100 > /tmp/u.txt
  echo "| 8b 32768 | $s | $(python3 scripts/gpu/cupti/perlayer.py /tmp/u.txt kernel kernel kernel__1) | at $((SECONDS-T0)) s" | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
done
exit 0
