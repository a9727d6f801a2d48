#!/usr/bin/env bash
# On the GPU machine: unpacks the compressed binaries that scripts/gpu/build.sh put in gpu-run/bin into bin/,
# and makes model directories of the LLaMA-2-7B and LLaMA-3-8B shapes for the -random-weights benchmarks
# (config.json from scripts/gpu/configs + the matching tokenizer from tokenizer/testdata) under gpu-run/models.
mkdir -p bin && for f in gpu-run/bin/*.gz; do b=$(basename "$f" .gz); gunzip -c "$f" > "bin/$b" && chmod +x "bin/$b"; done
for m in llama-2-7b:llama2 llama-3-8b:llama3; do
  dir=gpu-run/models/${m%%:*}; mkdir -p "$dir"
  cp "scripts/gpu/configs/${m%%:*}/config.json" "$dir/"
  gunzip -c "tokenizer/testdata/${m##*:}.tokenizer.json.gz" > "$dir/tokenizer.json"
done
