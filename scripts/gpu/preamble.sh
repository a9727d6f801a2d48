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
