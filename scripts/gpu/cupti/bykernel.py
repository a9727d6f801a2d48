#!/usr/bin/env python3
"""Sums a trace.c timeline's kernels by name: count, total and mean microseconds, the top N by total.
usage: bykernel.py TRACE [N] [PER]: PER divides the counts and totals (e.g. calls × layers) to give them per layer."""
import collections, sys

path = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
per = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
tot, cnt = collections.Counter(), collections.Counter()
for line in open(path, errors="replace"):
    f = line.rstrip("\n").split("\t")
    if f[0] == "K" and len(f) >= 8 and line.endswith("\n"):
        d = (int(f[2]) - int(f[1])) / 1e3
        tot[f[7]] += d
        cnt[f[7]] += 1
all_us = sum(tot.values())
print(f"{sum(cnt.values())} kernels, {all_us:.1f} us in all; per unit (/{per:g}): {all_us / per:.2f} us")
print("| kernel | count/unit | us/unit | mean us |")
print("|---|---:|---:|---:|")
for name, t in tot.most_common(top):
    print(f"| {name[:90]} | {cnt[name] / per:.2f} | {t / per:.2f} | {t / cnt[name]:.2f} |")
