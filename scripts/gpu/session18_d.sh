#!/usr/bin/env bash
# Session 18, call 4: kernel P by row blocks (squeeze.ScoresPByBlocks false, the new default) against kernel P by
# centroid blocks (SQLLM_SCORES_P=blocks): TestSqueezedInputBF16 on the device first (the probes with the new kernel,
# the bundled model's squeezed steps), then the attention benchmark's input phase by the slope (ten calls a
# repetition, dense in each process): new, former, new; the engine's 7B 32K input step, new and former, if time is
# left. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
device_test
input_ab "P by row blocks (new default)" 170 SQLLM_SCORES_P=
input_ab "P by centroid blocks (SQLLM_SCORES_P=blocks)" 170 SQLLM_SCORES_P=blocks
input_ab "P by row blocks, again" 170 SQLLM_SCORES_P=
if [ $((SECONDS-T0)) -lt 460 ]; then
  engine_ab SQLLM_SCORES_P "auto blocks" llama-2-7b "LLaMA-2-7B shape" 32768 2 60
fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
