#!/usr/bin/env bash
# Session 19, call 4 (the budget's last 240 s): the committed build's input phase at LLaMA-2-7B 128K only (512 tokens,
# by the slope), on whichever card the call gets (to settle that cell on an H200 if one comes).
. scripts/gpu/preamble.sh
T0=$SECONDS
AB_ARGS="-attnbench.shapes 7b -attnbench.ctx 131072" input_ab "512 tokens, 7B 128K: the committed build" 110
exit 0
