#!/usr/bin/env bash
# Session 14: (1) the paged kernel's splits (programs a KV head) for the decode step with the dynamic segment in its
# launch: 16, 32 (the engine's), 64, 128 (-attnbench.splits), ten calls a repetition, the four shapes. (2) The
# LLaMA-2-7B 32K squeezed decode with the dynamic segment in the launch, kernel by kernel (CUPTI, session14_b.sh).
. scripts/gpu/preamble.sh
for ns in 16 32 64 128; do
  echo "== splits $ns" | tee -a "$R"
  (cd llama && timeout 100 ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
    -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=false -attnbench.splits $ns \
    -attnbench.variants empty,dense,sq-engine-paged-sel-seg -attnbench.cluster=false -attnbench.out "$OUT/s$ns.md" > "$OUT/s$ns.log" 2>&1
  echo "rc=$?" | tee -a "$R")
  grep -E "^\| LLaMA.*decode \| (dense|sq)" "$OUT/s$ns.md" | tee -a "$R"
  rm -f "$OUT/s$ns.md" "$OUT/s$ns.log"
done
VARIANTS_8B32= VARIANTS_8B128= VARIANTS_IN= VARIANTS_7B32=sq-engine-paged-sel-seg bash scripts/gpu/session14_b.sh > /dev/null 2>&1
rm -f "$OUT"/*.log
exit 0
