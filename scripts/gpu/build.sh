#!/usr/bin/env bash
# Build the binaries the GPU scripts run (on the CPU machine; they link only libc and run there unchanged).
set -eu
cd "$(dirname "$0")/../.."
export CGO_ENABLED=1
go build -trimpath -ldflags="-s -w" -o bin/generate ./cmd/generate
go build -trimpath -ldflags="-s -w" -o bin/bench ./cmd/bench
go build -trimpath -ldflags="-s -w" -o bin/longbench ./cmd/longbench
go test -c -trimpath -ldflags="-s -w" -o bin/llama.test ./llama
# Compressed copies travel to the GPU machine (the working tree that travels is limited to 64 MiB).
mkdir -p gpu-run/bin && for f in bin/generate bin/bench bin/longbench bin/llama.test; do gzip -c "$f" > "gpu-run/$f.gz"; done
