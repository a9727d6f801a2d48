#!/usr/bin/env bash
# Session 10: the selection kernels (squeeze/selectk.go, round 7's two Triton kernels) and the bfloat16 centroids
# of a bfloat16 model's index, on the GPU.
# PART=1: the attention benchmark, decode and a 512-token input, LLaMA-2-7B / LLaMA-3-8B shapes at 32K and 128K,
#   10% budget, command buffers: the engine's squeezed attention with XLA's selection (sq-engine, sq-engine-paged)
#   and with the selection kernels (-sel), against dense; the check (every key kept, 4K context) includes the -sel
#   variants, and each -sel variant's output is compared with its counterpart's at the benchmark's own budget.
# PART=2: whole steps in bench: 7B 32K with SQLLM_SQUEEZE_SELECT=0 and default, 7B 128K default.
# PART=3: one layer of the 7B 32K input (-sel against sq-engine without the layer chain), the lookup alone (decode,
#   XLA's selection against the kernels'), and the engine's llama tests on the XLA backend (the probes, then the
#   selection kernels inside whole steps).
set -u
PART=${PART:-1}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1
if [ "$PART" = 1 ]; then
  (cd llama && timeout ${T1:-470} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.shapes ${SHAPES:-7b,8b} -attnbench.ctx ${CTX:-32768,131072} -attnbench.phases ${PHASES:-decode,input} \
    -attnbench.variants empty,dense-fused,sq-engine,sq-engine-sel,sq-engine-paged,sq-engine-paged-sel \
    -attnbench.cluster=false -attnbench.out "$OUT/attnbench.md" > "$OUT/attnbench.log" 2>&1
  echo "attnbench rc=$?" | tee -a "$R")
  grep -E "context|ms per call|check |failed" "$OUT/attnbench.log" | tee -a "$R"
  grep -E "^\| LLaMA" "$OUT/attnbench.md" >> "$R"
fi
if [ "$PART" = 3 ]; then
  # One layer, 7B 32K input: the -sel output against sq-engine's without the 32-layer chain (call 2: 0.42 over 32
  # layers with identical lists at layer 0); then the lookup alone, decode, XLA's selection against the kernels.
  (cd llama && timeout 120 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.shapes 7b \
    -attnbench.ctx 32768 -attnbench.phases input -attnbench.layers 1 -attnbench.check=false -attnbench.cluster=false \
    -attnbench.variants empty,sq-engine,sq-engine-sel > "$OUT/onelayer.log" 2>&1
  grep -E "ms per call|check" "$OUT/onelayer.log" | tee -a "$R"
  timeout 200 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -attnbench gpu -attnbench.shapes 7b,8b \
    -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false -attnbench.cluster=false \
    -attnbench.variants empty,lookup-scores,lookup-new,lookup-sel,sq-engine-paged-sel -attnbench.out "$OUT/lookup.md" > "$OUT/lookup.log" 2>&1
  grep -E "^\| LLaMA" "$OUT/lookup.md" | head -24 | tee -a "$R")
  (cd llama && SQLLM_TEST_BACKEND=xla timeout ${T0:-200} ../bin/llama.test -test.v \
    -test.run 'TestSqueezedPrefix$|TestSqueezedInputBF16|TestHierarchicalPrefix$|TestMassDecode' > "$OUT/xlatests.log" 2>&1
  echo "llama tests on XLA rc=$?" | tee -a "$R")
  grep -E "^(--- |ok|FAIL|PASS)|selection|probe" "$OUT/xlatests.log" | head -20 | tee -a "$R"
fi
if [ "$PART" = 4 ]; then
  # The engine's whole steps, 7B 32K, XLA's selection and the kernels alternately in one call (call 5: kernels 8.11 ms
  # a decode step against dense 9.16, while session 9 had 7.33 with XLA's selection and the paged kernel).
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 3 -memory-cache-gib 24"
  for s in 0 "" 0; do
    echo "== 7B 32K SQLLM_SQUEEZE_SELECT=$s" | tee -a "$R"
    SQLLM_SQUEEZE_SELECT=$s timeout 180 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
  done
fi
if [ "$PART" = 5 ]; then
  # Whole steps at 128K (130,000 tokens; the 7B shape's config allows 131,072 positions since this session, as the
  # 8B one): dense and squeezed with the engine's defaults, one process each.
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 100"
  for m in llama-2-7b:LLaMA-2-7B llama-3-8b:LLaMA-3-8B; do
    echo "== ${m##*:} 128K" | tee -a "$R"
    timeout ${T5:-285} $B -model gpu-run/models/${m%%:*} -label ${m##*:} -lens 130000 2>>"$OUT/b${m%%:*}.err" | grep "^| LLaMA" | tee -a "$R"
  done
fi
if [ "$PART" = 2 ]; then
  B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24"
  for s in 0 ""; do
    echo "== 7B 32K SQLLM_SQUEEZE_SELECT=$s" | tee -a "$R"
    SQLLM_SQUEEZE_SELECT=$s timeout 150 $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768 2>>"$OUT/b7.err" | grep "^| LLaMA" | tee -a "$R"
  done
  echo "== 7B 128K" | tee -a "$R"
  timeout ${T2:-220} $B -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 131072 2>>"$OUT/b7l.err" | grep "^| LLaMA" | tee -a "$R"
fi
for f in "$OUT"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -3 "$f" | cut -c1-300; }; done
exit 0
