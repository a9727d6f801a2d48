#!/usr/bin/env bash
# Unpacks the compressed binaries that scripts/gpu/build.sh put in gpu-run/bin into bin/.
mkdir -p bin && for f in gpu-run/bin/*.gz; do b=$(basename "$f" .gz); gunzip -c "$f" > "bin/$b" && chmod +x "bin/$b"; done
