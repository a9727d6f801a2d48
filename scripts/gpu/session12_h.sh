#!/usr/bin/env bash
# Session 12, eighth call: where a squeezed 512-token user-input step's time goes in the engine (LLaMA-2-7B 32K, the
# furthest input cell from issue 4's bar): bench under the CUPTI tracer (scripts/gpu/cupti), its steps summarised by
# kernel count (EACH=2: the user-input steps run twice per attention mode, the compiling run and the timed one).
# As run (session 12, call 8): the trace held 25,117 kernels but only 32 device-to-host copies, so analyze.py's
# segmentation found six steps of six different kernel counts and summarised none (sq.txt); the trace did not come back.
# Next time: keep the trace (gzip it into $OUT) and sum its kernels by name (cupti/bykernel.py), or time the user-input
# step's stages in the attention benchmark instead.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so) || { echo "cupti build failed"; exit 1; }
. scripts/gpu/xla-env.sh >/dev/null 2>&1
CUPTI_TRACE_OUT=/tmp/sq.trace CUDA_INJECTION64_PATH=$lib timeout 200 ./bin/bench -backend xla -dtype bf16 -random-weights \
  -squeeze-budget 0.1 -squeeze-input 512 -decode 4 -reps 1 -memory-cache-gib 24 -cache-dir - -model gpu-run/models/llama-2-7b \
  -label LLaMA-2-7B -lens 32768 2>"$OUT/sq.err" | grep "^|"
sleep 1
EACH=2 python3 scripts/gpu/cupti/analyze.py /tmp/sq.trace 300 > "$OUT/sq.txt" 2>&1
python3 scripts/gpu/cupti/bykernel.py /tmp/sq.trace 40 > "$OUT/bykernel.txt" 2>&1
gzip -c /tmp/sq.trace > "$OUT/sq.trace.gz"
grep -E "^(=====|[0-9]+ steps|most common|median step|launches)" "$OUT/sq.txt" | head -20
tail -2 "$OUT/sq.err" | cut -c1-300
exit 0
