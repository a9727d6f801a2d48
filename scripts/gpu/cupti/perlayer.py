#!/usr/bin/env python3
"""Per-layer kernel times from units.py's output (its last segment, the timed calls): a unit may hold several
layers, so each kernel name's mean duration over its occurrences in the unit, the unit's kernel time and span
divided by the occurrences of NAME (one per layer; default "kernel"). Prints one line:
NAME0 µs, NAME1 µs, ... (the names given), busy µs a layer, span µs a layer.
usage: perlayer.py UNITS_OUTPUT LAYER_KERNEL NAME..."""
import re
import sys

text = open(sys.argv[1]).read()
last = text[text.rfind("## "):] if "## " in text else ""
rows = re.findall(r"^\| (\d+) \| (\S+) \| ([0-9.]+) \| ([0-9.]+) \|$", last, re.M)
m = re.search(r"unit span \(median start to start\) ([0-9.]+) µs; kernel time ([0-9.]+) µs", last)
if not rows or not m:
    print("no unit")
    sys.exit(0)
layers = sum(1 for r in rows if r[1] == sys.argv[2]) or 1
out = []
for name in sys.argv[3:]:
    d = [float(r[2]) for r in rows if r[1] == name]
    out.append(f"{name} {sum(d) / len(d):.2f}" if d else f"{name} -")
print(" | ".join(out) + f" | busy {float(m.group(2)) / layers:.1f} | span {float(m.group(1)) / layers:.1f} a layer ({layers} layers a unit)")
