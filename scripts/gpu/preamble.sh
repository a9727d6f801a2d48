# Sourced by the session scripts on the GPU machine, from the repository root: set -u, OUT (default /tmp/out) and its
# results file R, the Go binaries unpacked (scripts/gpu/unpack.sh), the card's line in R, and the XLA plugin's
# environment (scripts/gpu/xla-env.sh). Defines engine_ab.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R="$OUT/results.md"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$R"
. scripts/gpu/xla-env.sh >/dev/null 2>&1

# engine_ab VAR "VALUES" MODEL LABEL LENS [REPS] [LIMIT]: the engine's dense and squeezed steps (bin/bench, random
# weights of gpu-run/models/MODEL, bf16, a 10% budget, a 512-token input, 32 decode steps, REPS repetitions, default
# 3) at LENS context tokens, once per value of the environment variable VAR ("auto": unset), each in its own process
# (LIMIT seconds at most, default 150): the report's rows and the process's wall time go to R, stderr to
# $OUT/bench.err. VAR is unset afterwards.
engine_ab() {
  local var=$1 vals=$2 model=$3 label=$4 lens=$5 reps=${6:-3} limit=${7:-150} v
  for v in $vals; do
    echo "== $label $lens, $var=$v" | tee -a "$R"
    if [ "$v" = auto ]; then unset "$var"; else export "$var=$v"; fi
    /usr/bin/time -f "wall %e s" timeout "$limit" ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 \
      -squeeze-input 512 -decode 32 -reps "$reps" -memory-cache-gib 24 -cache-dir - -model "gpu-run/models/$model" \
      -label "$label" -lens "$lens" 2>>"$OUT/bench.err" | grep "^| LLaMA" | tee -a "$R"
    tail -1 "$OUT/bench.err" | tee -a "$R"
  done
  unset "$var"
}

# cupti_unit LABEL SHAPE CTX VARIANT [ENV=VALUE...]: one attention-benchmark decode process (8 chained layers, 200
# timed calls, VARIANT alone) under the CUPTI tracer, with the given environment; the repeating unit's first kernels
# (scripts/gpu/cupti/units.py) go to R. Needs lib (scripts/gpu/cupti/build.sh's library).
cupti_unit() {
  local label=$1 shape=$2 ctx=$3 variant=$4; shift 4
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout 100 ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes "$shape" -attnbench.ctx "$ctx" \
    -attnbench.phases decode -attnbench.check=false -attnbench.variants "$variant" -attnbench.cluster=false \
    -attnbench.layers 8 -attnbench.reps 200 > "$OUT/t.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  python3 scripts/gpu/cupti/units.py /tmp/t.trace 1000 | grep -E "^unit span|^\| [0-9] \|" | head -9 | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
}

# ab_totals LABEL VARIANTS CHECK [ENV=VALUE...]: the attention benchmark's decode at the four shapes (7B, 8B; 32K,
# 128K), ten calls a repetition, in one process with the given environment; CHECK true runs the every-key-kept check
# first. The variants' rows (and the check's rows for the lookup variant) go to R.
ab_totals() {
  local label=$1 variants=$2 check=$3; shift 3
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout 150 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=$check \
    -attnbench.variants "$variants" -attnbench.cluster=false -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -E "look vs dense|FAIL|panic" "$OUT/ab.log" | head -4 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}

# device_test: TestSqueezedInputBF16 on the device (SQLLM_TEST_BACKEND=xla; the probes, then the bundled model's squeezed
# steps through the kernels the build takes), its verdict lines to R.
device_test() {
  (cd llama && SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1)
  echo "tests rc=$?" | tee -a "$R"
  grep -E "^(---|ok|FAIL|PASS)" "$OUT/tests.log" | head -5 | tee -a "$R"; rm -f "$OUT/tests.log"
}

# input_ab LABEL LIMIT [ENV=VALUE...]: the attention benchmark's input phase at the four shapes (7B, 8B; 32K, 128K) by the
# slope, ten calls a repetition, dense-fused and sq-engine-sel-sk, in one process with the given environment (LIMIT
# seconds at most); the rows go to R. Needs T0 (the script's start, in SECONDS). AB_BIN: another test binary (a path
# from the repository root; default bin/llama.test); AB_ARGS: more flags (e.g. -attnbench.input 64).
input_ab() {
  local label=$1 limit=$2 bin=${AB_BIN:-bin/llama.test}; shift 2
  echo "== $label" | tee -a "$R"
  (cd llama && env "$@" timeout "$limit" "../$bin" -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu \
    -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases input \
    -attnbench.check=false -attnbench.cluster=false -attnbench.variants dense-fused,sq-engine-sel-sk -attnbench.out "$OUT/ab.md" ${AB_ARGS:-} > "$OUT/ab.log" 2>&1)
  echo "rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
  grep -E "FAIL|panic|rror" "$OUT/ab.log" | head -4 | cut -c1-300 | tee -a "$R"
  grep -E "^\| LLaMA.*input [0-9]+ \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md" "$OUT/ab.log"
}

# cupti_input LABEL SHAPE CTX VARIANT [LIMIT]: one attention-benchmark input-phase process (8 chained layers, 300 timed
# calls, ten a repetition, VARIANT alone, no slope) under the CUPTI tracer (LIMIT seconds, default 150); the last
# segment's repeating unit (scripts/gpu/cupti/units.py) goes to R. Needs lib (scripts/gpu/cupti/build.sh's library).
cupti_input() {
  local label=$1 shape=$2 ctx=$3 variant=$4 limit=${5:-150}
  echo "== $label" | tee -a "$R"
  (cd llama && CUPTI_TRACE_OUT=/tmp/t.trace CUDA_INJECTION64_PATH=$lib timeout "$limit" ../bin/llama.test \
    -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.shapes "$shape" -attnbench.ctx "$ctx" \
    -attnbench.phases input -attnbench.check=false -attnbench.variants "$variant" -attnbench.cluster=false -attnbench.slope=false \
    -attnbench.layers 8 -attnbench.reps 300 -attnbench.batch 10 > "$OUT/t.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  python3 scripts/gpu/cupti/units.py /tmp/t.trace 100 > /tmp/u.txt
  grep -c "^## " /tmp/u.txt | tee -a "$R"  # segments; the last is the timed calls
  awk '/^## /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' /tmp/u.txt | grep -E "^unit span|^## |^\| [0-9]+ \|" | head -80 | tee -a "$R"
  rm -f /tmp/t.trace "$OUT/t.log"
}
