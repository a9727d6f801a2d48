#!/usr/bin/env bash
# Session 15, call 2: the lookup kernel (squeeze/lookupk.go, kernels/select_s_k*; Pallas round 22). (1)
# TestSqueezedInputBF16 on the device with the defaults: the bundled model's decode steps take the lookup kernel
# after ProbeLookup (the report line says so). (2) The attention benchmark's decode, ten calls a repetition,
# every-key-kept check first: XLA's scores + kernel A (sq-engine-paged-sel-seg) against the lookup kernel
# (sq-engine-paged-sel-seg-look), dense beside, at the four shapes. (3) With CUPTI=1, the 7B 32K layer kernel by
# kernel for the lookup variant. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
cd llama
SQLLM_TEST_BACKEND=xla timeout 100 ../bin/llama.test -test.run '^TestSqueezedInputBF16$' -test.v -test.timeout 10m > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|lookup|diff|logits" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$R"
echo "== decode, batch 10" | tee -a "$R"
timeout ${T2:-330} ../bin/llama.test -test.run '^TestAttentionBench$' -test.v -test.timeout 20m -attnbench gpu -attnbench.batch 10 \
  -attnbench.shapes 7b,8b -attnbench.ctx 32768,131072 -attnbench.phases decode -attnbench.check=true \
  -attnbench.variants empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look -attnbench.cluster=false \
  -attnbench.out "$OUT/decode10.md" > "$OUT/decode10.log" 2>&1
echo "rc=$?" | tee -a "$R"
grep -iE "check|max.*diff|every key|FAIL|panic" "$OUT/decode10.log" | head -20 | cut -c1-250 | tee -a "$R"
grep -E "^\| LLaMA.*decode \| [a-z]" "$OUT/decode10.md" | tee -a "$R"
cd ..
if [ -n "${CUPTI:-}" ]; then
  VARIANTS_8B32= VARIANTS_8B128= VARIANTS_IN= VARIANTS_7B32=sq-engine-paged-sel-seg-look bash scripts/gpu/session14_b.sh > /dev/null 2>&1
  rm -f "$OUT"/7b-32k-*.log
fi
rm -f "$OUT/tests.log"
exit 0
