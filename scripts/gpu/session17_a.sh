#!/usr/bin/env bash
# Session 17, call 1: a user input's attention in command buffers (CUDA graphs) whose independent commands XLA may run
# concurrently (--xla_gpu_command_buffer_scheduling_mode=CONCURRENT): the input's own tokens' causal attention does
# not depend on the centroid lookup, and the lookup's score kernels fill few of the card's SMs. The attention
# benchmark's input phase (slope, ten calls a repetition) in three processes: as committed (no graphs for inputs),
# -attnbench.inputgraphs (XLA's default scheduling), and -attnbench.inputgraphs with CONCURRENT; then the decode
# phase under CONCURRENT; then the engine's 512-token input step at 7B 32K with SQLLM_GRAPH_ROWS=512 and CONCURRENT
# beside the default. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
so=${GOMLX_BACKEND#xla:}
echo "plugin: $so" | tee -a "$R"
strings "$so" | grep -oE "xla_gpu_(command_buffer_scheduling_mode|graph_enable_concurrent_region)" | sort -u | tee -a "$R"
strings "$so" | grep -E "^(SERIALIZE|CONCURRENT|LHS)$" | sort -u | tr '\n' ' ' | tee -a "$R"; echo | tee -a "$R"
CONC="--xla_gpu_command_buffer_scheduling_mode=CONCURRENT"
run_ab() { # LABEL PHASES VARIANTS EXTRA_FLAGS [ENV=VALUE...]
  local label=$1 phases=$2 variants=$3 extra=$4; shift 4
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases "$phases" \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants "$variants" $extra -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*(decode|input [0-9]+) \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  cp "$OUT/ab.log" "$OUT/ab_$(echo "$label" | tr -c 'a-z0-9' '_').log"; rm -f "$OUT/ab.md" "$OUT/ab.log"
}
IV=dense-fused,sq-engine-sel-sk
run_ab "input, committed (no graphs)" input $IV ""
run_ab "input, graphs, default scheduling" input $IV "-attnbench.inputgraphs"
run_ab "input, graphs, CONCURRENT" input $IV "-attnbench.inputgraphs" XLA_FLAGS="${XLA_FLAGS:-} $CONC"
run_ab "decode, CONCURRENT" decode dense,sq-engine-paged-sel-seg-look "" XLA_FLAGS="${XLA_FLAGS:-} $CONC"
if [ $((SECONDS-T0)) -lt 380 ]; then
  engine_ab SQLLM_GRAPH_ROWS "auto" llama-2-7b "LLaMA-2-7B shape" 32768 2 100
  (export XLA_FLAGS="${XLA_FLAGS:-} $CONC"; engine_ab SQLLM_GRAPH_ROWS "512" llama-2-7b "LLaMA-2-7B shape, CONCURRENT" 32768 2 100)
fi
cd "$OUT" && tar czf logs.tgz ab_*.log && rm -f ab_*.log
exit 0
