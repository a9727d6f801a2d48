#!/usr/bin/env bash
# Session 8: round 5 of pallas_squeeze2.py (the selection kernel), then the engine's squeezed decode step with the
# paged kernel (then the default): once with XLA_FLAGS naming the Triton call as a command-buffer custom call
# (this XLA does not know --legacy_command_buffer_custom_call_targets: it stopped at flag parsing) and once with
# command buffers off. Kept as the record of that call.
export OUT; nvidia-smi --query-gpu=name --format=csv,noheader
ROUND=5 timeout 200 python3 scripts/gpu/pallas_squeeze2.py > $OUT/log5.txt 2>&1; echo rc=$?
(cd $OUT && tar czf kernels5.tgz kernels 2>/dev/null && rm -rf kernels); cat $OUT/pallas.md; grep -iE "Error" -B2 -A3 $OUT/log5.txt | head -30
bash scripts/gpu/unpack.sh >/dev/null 2>&1; . scripts/gpu/xla-env.sh
B="./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 -squeeze-input 512 -decode 32 -reps 2 -memory-cache-gib 24 -model gpu-run/models/llama-2-7b -label LLaMA-2-7B -lens 32768"
X="$XLA_FLAGS"
echo "== paged, triton call as a command-buffer target"; XLA_FLAGS="$X --legacy_command_buffer_custom_call_targets=__gpu\$xla.gpu.triton" timeout 170 $B 2>$OUT/b1.err | grep "^| LLaMA"; tail -c 400 $OUT/b1.err
echo "== paged, command buffers off"; XLA_FLAGS="$X --xla_gpu_enable_command_buffer=" timeout 170 $B 2>$OUT/b2.err | grep "^| LLaMA"; tail -c 300 $OUT/b2.err
