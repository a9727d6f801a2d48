#!/usr/bin/env bash
# Session 12, sixth call: the two cells at the bar, measured again with ten calls a repetition (-attnbench.batch 10),
# twice: a 512-token input at 128K (LLaMA-3-8B 4.04× and LLaMA-2-7B 3.58× in call 5, one call a repetition) and the
# LLaMA-2-7B 128K decode step (4.00× / 4.05× in call 4).
. scripts/gpu/preamble.sh
cd llama
for run in 1 2; do
  echo "== input 128K, batch 10, run $run" | tee -a "$R"
  timeout 100 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
    -attnbench.shapes 7b,8b -attnbench.ctx 131072 -attnbench.phases input -attnbench.check=false \
    -attnbench.variants empty,dense-fused,sq-engine-sel-sk -attnbench.cluster=false \
    -attnbench.out "$OUT/input$run.md" > "$OUT/input$run.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "^\| LLaMA.*input 512 \| [a-z]" "$OUT/input$run.md" | tee -a "$R"
  echo "== decode 7B 128K, batch 10, run $run" | tee -a "$R"
  timeout 60 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
    -attnbench.shapes 7b -attnbench.ctx 131072 -attnbench.phases decode -attnbench.check=false \
    -attnbench.variants empty,dense,sq-engine-paged-sel -attnbench.cluster=false \
    -attnbench.out "$OUT/decode$run.md" > "$OUT/decode$run.log" 2>&1
  echo "rc=$?" | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode$run.md" | tee -a "$R"
done
exit 0
