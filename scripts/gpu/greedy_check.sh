#!/usr/bin/env bash
# On the GPU machine: the bundled model's greedy output (f32, 48 tokens) through XLA for every prompt in
# gpu-run/expected (the CPU's outputs; "default" is the CLI's default prompt), compared byte for byte.
# Outputs and stderr go under $OUT.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in gpu-run/expected/*.txt; do
  name=$(basename "$f" .txt); args=""; [ "$name" != default ] && args="-prompt-file gpu-run/prompts/$name.prompt"
  timeout 120 ./bin/generate -backend xla -dtype f32 -max-tokens 48 $args >"$OUT/${name}_xla.txt" 2>>"$OUT/greedy.err"
  if cmp -s "$f" "$OUT/${name}_xla.txt"; then echo "greedy $name: identical to CPU"; else echo "greedy $name: DIFFERS from CPU"; fi
done
