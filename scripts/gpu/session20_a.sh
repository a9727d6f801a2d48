#!/usr/bin/env bash
# Session 20, call 1: the causal cuDNN call over a user input's own tokens on a second XLA stream (operation queue 1,
# with --xla_gpu_multi_streamed_windowed_einsum=true so that XLA wraps it asynchronously), so that it overlaps the
# lookup chain. The build carried a temporary go-xla change, never committed: flashBackendConfigV's
# "operation_queue_id" was GOXLA_FMHA_CAUSAL_QUEUE's value for CAUSAL / PADDING_CAUSAL calls ("0" otherwise).
# Result: XLA aborted compiling the input step (std::out_of_range from a raw_hash_map::at). The every-key-kept check with it (7B, 8B, 32K), then
# the attention benchmark's input phase by the slope: this build as is, with the second stream, as is again.
# Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
QF="XLA_FLAGS=$XLA_FLAGS --xla_gpu_multi_streamed_windowed_einsum=true"
echo "== check, second stream" | tee -a "$R"
(cd llama && env "$QF" GOXLA_FMHA_CAUSAL_QUEUE=1 timeout 120 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m \
  -attnbench gpu -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768 -attnbench.phases input -attnbench.check=true \
  -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/abc.md" > "$OUT/abc.log" 2>&1)
echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "vs dense|FAIL|panic|rror|nknown" "$OUT/abc.log" | head -12 | cut -c1-300 | tee -a "$R"
grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/abc.md" | tee -a "$R"
input_ab "512 tokens: this build" 170
input_ab "512 tokens: own tokens' cuDNN call on queue 1" 170 "$QF" GOXLA_FMHA_CAUSAL_QUEUE=1
if [ $((SECONDS-T0)) -lt 420 ]; then input_ab "512 tokens: this build again" 170; fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
