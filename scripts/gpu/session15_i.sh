#!/usr/bin/env bash
# Session 15, call 12: the committed code (lookup kernel, new paged layout), the attention benchmark's decode at the four
# shapes in two processes (every-key-kept check in the first): XLA's scores + kernel A (sq-engine-paged-sel-seg, the
# engine's default at 8B 128K) and the lookup kernel (sq-engine-paged-sel-seg-look, the default at the other three),
# dense beside. Build first (here): bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
ab_totals "final, process 1" empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look true
ab_totals "final, process 2" empty,dense,sq-engine-paged-sel-seg,sq-engine-paged-sel-seg-look false
exit 0
