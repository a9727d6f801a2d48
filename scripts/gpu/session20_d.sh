#!/usr/bin/env bash
# Session 20, call 10: the committed build's LLaMA-2-7B 128K input cell (attention benchmark, input phase, 512 tokens,
# by the slope), in as many processes as the session's last device minutes allow, on whichever card the call got.
# Build first: bash scripts/gpu/build.sh.
. scripts/gpu/preamble.sh
T0=$SECONDS
AB_ARGS="-attnbench.shapes 7b -attnbench.ctx 131072" input_ab "7B 128K, 512 tokens: this build" 120
if [ $((SECONDS-T0)) -lt 110 ]; then AB_ARGS="-attnbench.shapes 7b -attnbench.ctx 131072" input_ab "7B 128K, 512 tokens: this build again" 120; fi
echo "done at $((SECONDS-T0)) s" | tee -a "$R"
exit 0
