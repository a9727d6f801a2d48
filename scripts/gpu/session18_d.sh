#!/usr/bin/env bash
# Session 18, call 4: kernel P by row blocks (squeeze.ScoresPByBlocks false, the new default) against kernel P by
# centroid blocks (SQLLM_SCORES_P=blocks): TestSqueezedInputBF16 on the device first (the probes with the new kernel,
# the bundled model's squeezed steps), then the attention benchmark's input phase by the slope (ten calls a
# repetition, dense in each process): new, former, new; the engine's 7B 32K input step, new and former, if time is
# left. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
device_test
run_in() { # LABEL [ENV=VALUE...]
  local label=$1; shift
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 170 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}
run_in "P by row blocks (new default)" SQLLM_SCORES_P=
run_in "P by centroid blocks (SQLLM_SCORES_P=blocks)" SQLLM_SCORES_P=blocks
run_in "P by row blocks, again" SQLLM_SCORES_P=
if [ $((SECONDS-T0)) -lt 460 ]; then
  engine_ab SQLLM_SCORES_P "auto blocks" llama-2-7b "LLaMA-2-7B shape" 32768 2 60
fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
