#!/usr/bin/env bash
# Session 15, call 4: the lookup kernel with the attention scale folded in (Pallas round 22 re-exported). The attention
# benchmark's decode (ten calls a repetition, four shapes): XLA's scores + kernel A, the lookup kernel, and the lookup
# kernel over the buffers read as the cluster-sorted layout; then, one process each, the lookup kernel with 8 warps
# (SQLLM_TEST_LOOKUP_WARPS=8) and kernel B with an 8- or 16-way search (SQLLM_TEST_SELB2), dense re-measured in each.
# Then the engine at LLaMA-2-7B 32K with SQLLM_SQUEEZE_LOOKUP=0 and unset. Build first (here): bash scripts/gpu/build.sh.
# Ran on a temporary build: SQLLM_TEST_LOOKUP_WARPS and SQLLM_TEST_SELB2 picked the extra configs
# (select_s_k{Kp}_w{W}, select_b2_{ways}_k{Kp}_{layout}; pallas_lookup.py EXPORT_WARPS / EXPORT_B2) that were embedded
# for the measurement only; the committed code reads neither.
. scripts/gpu/preamble.sh
ab() {  # label variants [env...]
  echo "== $1" | tee -a "$R"
  (cd llama && env "${@:3}" timeout ${T2:-150} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m \
    -attnbench gpu -attnbench.batch 10 -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode \
    -attnbench.check=false -attnbench.variants $2 -attnbench.cluster=false -attnbench.out "$OUT/ab.md" > "$OUT/ab.log" 2>&1)
  echo "rc=$?" | tee -a "$R"
  grep -iE "FAIL|panic" "$OUT/ab.log" | head -5 | cut -c1-250 | tee -a "$R"
  grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/ab.md" | tee -a "$R"
  rm -f "$OUT/ab.md"
}
ab base empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look,sq-engine-paged-sel-seg-look-sorted X=1
ab w8 empty,dense,sq-engine-paged-sel-seg-look SQLLM_TEST_LOOKUP_WARPS=8
ab b2-16 empty,dense,sq-engine-paged-sel-seg-look SQLLM_TEST_SELB2=16
ab b2-8 empty,dense,sq-engine-paged-sel-seg-look SQLLM_TEST_SELB2=8
engine_ab SQLLM_SQUEEZE_LOOKUP "0 auto" llama-2-7b LLaMA-2-7B 32768 3 120
rm -f "$OUT/ab.log"
exit 0
