#!/usr/bin/env bash
# On the GPU machine: builds trace.c against the CUPTI that ships with the machine's CUDA wheels (or
# toolkit) into $1 (default /tmp/libcuptitrace.so). Prints the library's path, and the CUPTI lib dir to add
# to LD_LIBRARY_PATH.
set -eu
out=${1:-/tmp/libcuptitrace.so}
h=$(find / -name cupti_activity.h -not -path '*/proc/*' 2>/dev/null | head -1)
inc=$(dirname "$h")
lib=$(dirname "$(find / -name 'libcupti.so*' -not -path '*/proc/*' 2>/dev/null | head -1)")
k=$(grep -o 'CUpti_ActivityKernel[0-9]*' "$h" | sort -V | tail -1)
m=$(grep -o "CUpti_ActivityMemcpy[0-9]*" "$h" | sort -V | tail -1)
s=$(grep -o "CUpti_ActivityMemset[0-9]*" "$h" | sort -V | tail -1)
so=$(ls "$lib"/libcupti.so* | head -1)
gcc -O2 -shared -fPIC -o "$out" "$(dirname "$0")/trace.c" -I"$inc" -DKSTRUCT="$k" -DMSTRUCT="$m" -DSSTRUCT="$s" "$so" -lpthread -Wl,-rpath,"$lib"
echo "cupti: header $h, records $k/$m, lib $so" >&2
echo "$out"
