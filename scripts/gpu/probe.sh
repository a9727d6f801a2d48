#!/usr/bin/env bash
# One device call of measurements that decide what to build next (from the repository root, after
# scripts/gpu/build.sh and prep.sh): the Squeezed Attention evaluation's per-item phase times (where a
# squeezed tinycode_lcc item spends its time), then the projection benchmark (llama/proj_bench_test.go:
# split / fused / transposed weight products at 1 and 80 rows) under XLA's default flags and with Triton
# GEMMs off, then the engine's own LLaMA-2-7B decode at 4K for reference. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/unpack.sh
STEPS=${STEPS:-lcc proj flags bench}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
if has lcc; then
  echo "== tinycode_lcc sq70, first ${LCC_N:-12} items, per-item phase times"
  start=$(date +%s)
  timeout ${LCC_TIMEOUT:-150} ./bin/longbench -backend xla -dtype f32 -data gpu-run/data -tasks tinycode_lcc -configs sq70 \
    -limit ${LCC_N:-12} -out /tmp/lb-probe -timings 2>&1 | tee "$OUT/lcc.txt" | grep -E "timings|score|sq70" | head -40
  echo "lcc: $(( $(date +%s) - start ))s"
fi
if has proj; then
  echo "== projection benchmark, default XLA flags"
  ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; cd llama && timeout ${PROJ_TIMEOUT:-240} ../bin/llama.test -test.run '^TestProjectionBench$' -test.v \
      -projbench gpu 2>&1 | tee "$OUT/proj.txt" | grep -vE "^=== RUN" )
fi
if has flags; then
  for f in --xla_gpu_enable_triton_gemm=false; do
    echo "== projection benchmark, LLaMA-2-7B, XLA_FLAGS += $f"
    ( . scripts/gpu/xla-env.sh >/dev/null 2>&1; export XLA_FLAGS="$XLA_FLAGS $f"; cd llama && timeout 150 ../bin/llama.test \
        -test.run '^TestProjectionBench$' -test.v -projbench gpu -projbench.configs ../scripts/gpu/configs/llama-2-7b \
        -projbench.variants split,fused 2>&1 | tee -a "$OUT/flags.txt" | grep -vE "^=== RUN" )
  done
fi
if has nsys; then
  echo "== nsys: kernels of LLaMA-2-7B decode steps at 4K"
  NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    timeout 240 "$NSYS" profile -o "$OUT/decode7b" -t cuda --force-overwrite true ./bin/bench -backend xla -dtype bf16 \
      -model gpu-run/models/llama-2-7b -random-weights -lens 4096 -decode 64 -reps 1 >"$OUT/nsys.log" 2>&1
    "$NSYS" stats -r cuda_gpu_kern_sum -f csv -o "$OUT/decode7b" "$OUT/decode7b.nsys-rep" >>"$OUT/nsys.log" 2>&1
    head -45 "$OUT"/decode7b_cuda_gpu_kern_sum.csv | cut -c1-220
    rm -f "$OUT"/decode7b.sqlite
  else
    echo "no nsys"; ls /usr/local/ | head; 
  fi
fi
if has bench; then
  echo "== engine, LLaMA-2-7B shape, 4K"
  timeout 200 ./bin/bench -backend xla -dtype bf16 -model gpu-run/models/llama-2-7b -random-weights -label "LLaMA-2-7B shape" \
    -lens 4096 -decode 32 -reps 2 2>>"$OUT/bench.err"
fi
exit 0
