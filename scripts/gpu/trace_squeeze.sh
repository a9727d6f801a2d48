#!/usr/bin/env bash
# Session 5: where a squeezed decode step's time goes (issue 4). Runs bench -squeeze-budget 0.1
# -squeeze-hierarchical on the LLaMA-2-7B shape at 32K under the CUPTI tracer (scripts/gpu/cupti): dense,
# flat-squeezed and hierarchical decode steps have different kernel counts, and analyze.py (EACH=)
# summarises each kind. Also dumps the optimised HLO of the step executables (hlo.tgz).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/gpu/unpack.sh
nvidia-smi --query-gpu=name --format=csv,noheader
lib=$(bash scripts/gpu/cupti/build.sh /tmp/libcuptitrace.so) || { echo "cupti build failed"; exit 1; }
m=${MODEL:-llama-2-7b}
XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*step.*" \
  CUPTI_TRACE_OUT=/tmp/sq.trace CUPTI_TRACE_DRIVER=1 CUDA_INJECTION64_PATH=$lib \
  timeout 300 ./bin/bench -backend xla -dtype bf16 -random-weights -squeeze-budget 0.1 ${HIER--squeeze-hierarchical} \
  -squeeze-input 512 -decode ${DECODE:-24} -reps 1 -memory-cache-gib 40 -model gpu-run/models/$m -label "$m" \
  -lens ${LENS:-32768} 2>"$OUT/sq.err" | grep "^|"
sleep 1
ls -la /tmp/sq.trace | awk '{print $5, $9}'
mkdir -p /tmp/tsv; EACH=10 python3 scripts/gpu/cupti/analyze.py /tmp/sq.trace 100 /tmp/tsv/sq.tsv > "$OUT/sq.txt" 2>&1
grep -E "^(=====|[0-9]+ steps|most common|median step|launches)" "$OUT/sq.txt"
tar czf "$OUT/tsv.tgz" -C /tmp/tsv .
if [ -d /tmp/dump ]; then
  (cd /tmp/dump && tar czf "$OUT/hlo.tgz" $(ls | grep -E 'after_optimizations\.txt$' | head -50))
  ls -la "$OUT/hlo.tgz"
fi
tail -3 "$OUT/sq.err"
exit 0
