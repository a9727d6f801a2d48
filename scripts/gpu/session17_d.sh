#!/usr/bin/env bash
# Session 17, call 6: kernel Z's splits from one wave of programs (squeeze.scoresZWave; 1 split at the four shapes)
# against the former rule's 3 (SQLLM_SCORES_SPLITS=3,0), by the attention benchmark's slope (input phase, ten calls a
# repetition, dense in each process): new, former, new. Then TestSqueezedInputBF16 on the device (the probes, the
# bundled model's squeezed steps). Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
run_in() { # LABEL [ENV=VALUE...]
  local label=$1; shift
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}
run_in "new rule (Z one wave)" SQLLM_SCORES_SPLITS=
run_in "former rule (SQLLM_SCORES_SPLITS=3,0)" SQLLM_SCORES_SPLITS=3,0
run_in "new rule, again" SQLLM_SCORES_SPLITS=
device_test
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
