#!/usr/bin/env bash
# Prepares gpu-run/ (git-ignored; it travels to the GPU machine through the device tool's `carry`) from a
# clean checkout: the binaries (scripts/gpu/build.sh) and the tinycode_lcc data. (scripts/gpu/unpack.sh, on
# the GPU machine, makes the LLaMA-2-7B / LLaMA-3-8B shape directories for -random-weights.)
set -eu
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
bash scripts/gpu/build.sh
mkdir -p gpu-run/data/tinycode_lcc
cp "$SHARED/evals/tinycode_lcc/dev.jsonl" gpu-run/data/tinycode_lcc/dev.jsonl
du -sh gpu-run
