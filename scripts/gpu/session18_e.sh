#!/usr/bin/env bash
# Session 18, call 5: Pallas round 29 (scripts/gpu/pallas_scores.py, ROUND=29): kernels Z and P by row blocks in one
# kernel, checked and timed against the embedded pair, the fastest passing choice exported to $OUT/kernels; then, if it
# passed, the engine with it through SQLLM_KERNEL_DIR (squeeze.KernelDir): TestSqueezedInputBF16 on the device (the
# probe runs it), and the attention benchmark's input phase by the slope, fused against SQLLM_SCORES_P=rows (kernel Z,
# then P by row blocks), one process each. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
ROUND=29 EXPORT=1 timeout 200 python3 scripts/gpu/pallas_scores.py > "$OUT/pallas_stdout.txt" 2>&1
echo "pallas rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -v "^  File\|^    " "$OUT/pallas.md" | tail -12 | tee -a "$R"
if [ ! -f "$OUT/kernels/scores_zp_d128.cfg" ]; then echo "no export: stop" | tee -a "$R"; exit 0; fi
export SQLLM_KERNEL_DIR="$PWD/$OUT/kernels"; case "$OUT" in /*) export SQLLM_KERNEL_DIR="$OUT/kernels";; esac
device_test
run_in() { # LABEL [ENV=VALUE...]
  local label=$1; shift
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}
run_in "Z and P by row blocks fused (SQLLM_KERNEL_DIR)" SQLLM_SCORES_P=
run_in "Z, then P by row blocks (SQLLM_SCORES_P=rows)" SQLLM_SCORES_P=rows
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
