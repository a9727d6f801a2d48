#!/usr/bin/env bash
# Session 20, call 8: the own-tokens kernel (squeeze/ownk.go, Pallas round 32) in the engine, as built from commit
# 48867a9 (its Go side and SQLLM_SQUEEZE_OWN were reverted in the next commit: no gain). TestKernelProbes and
# TestSqueezedInputBF16 on the device (the probes, then the bundled model's squeezed steps through the kernels); the
# attention benchmark's input phase by the slope, 512 tokens: the build with the kernel (default), without it
# (SQLLM_SQUEEZE_OWN=0), with it again; the engine's user-input step at LLaMA-2-7B 32K, without and with.
# Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
(cd llama && SQLLM_TEST_BACKEND=xla timeout 150 ../bin/llama.test -test.run '^(TestKernelProbes|TestSqueezedInputBF16)$' -test.v > "$OUT/tests.log" 2>&1)
echo "tests rc=$? at $((SECONDS-T0)) s" | tee -a "$R"
grep -E "^(---|ok|FAIL|PASS)|probe says|relative|from dense" "$OUT/tests.log" | cut -c1-260 | head -16 | tee -a "$R"
input_ab "512 tokens: own-tokens kernel (default)" 170
input_ab "512 tokens: SQLLM_SQUEEZE_OWN=0" 170 SQLLM_SQUEEZE_OWN=0
if [ $((SECONDS-T0)) -lt 400 ]; then input_ab "512 tokens: own-tokens kernel again" 170; fi
if [ $((SECONDS-T0)) -lt 480 ]; then engine_ab SQLLM_SQUEEZE_OWN "0 auto" llama-2-7b "LLaMA-2-7B" 32768 2 100; fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
