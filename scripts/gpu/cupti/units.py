#!/usr/bin/env python3
"""Summarises a trace.c timeline of the attention benchmark kernel by kernel, with the idle gaps between them
(session 14). The timeline is cut into segments at idle gaps longer than CUT ms (compilation, data set-up between
variants); in each segment of at least MIN kernels, the smallest unit of kernel names that repeats back to back at
its end, less a partial unit at the very end (one layer when the layers run the same kernels) is found, and its last repetitions (up to 200, the first
half dropped as warm-up) are averaged position by position: mean duration, mean idle gap before the kernel (from
the previous kernel's end, any stream). The unit's span (first start to the next unit's first start) is the time a
layer costs on the device, launch gaps included.
usage: units.py TRACE [MIN=200] [CUT=20]"""
import statistics
import sys


def load(path):
    ks = []
    for line in open(path, errors="replace"):
        if not line.endswith("\n"):
            continue
        f = line.rstrip("\n").split("\t")
        if f[0] == "K" and len(f) >= 8:
            ks.append((int(f[1]), int(f[2]), f[7]))
    ks.sort()
    return ks


def segments(ks, cut_ns):
    seg, end = [], None
    for k in ks:
        if end is not None and k[0] - end > cut_ns and seg:
            yield seg
            seg = []
        seg.append(k)
        end = k[1] if end is None else max(end, k[1])
    if seg:
        yield seg


def trimmed_period(names, most=400, trim=1500):
    """(p, e): the smallest unit p repeating three times back to back before names[e:], after dropping the fewest
    trailing names (a timeline cut at the program's exit ends in a partial unit)."""
    for t in range(0, min(trim, len(names))):
        e = len(names) - t
        for p in range(1, min(most, e // 3) + 1):
            if names[e - p:e] == names[e - 2 * p:e - p] == names[e - 3 * p:e - 2 * p]:
                return p, e
    return None, None


def summarise(seg, label):
    p, e = trimmed_period([k[2] for k in seg])
    if p is None:
        print(f"## {label}: {len(seg)} kernels, no repeating unit")
        return
    seg = seg[:e]
    names = [k[2] for k in seg]
    times = 1
    while len(names) >= (times + 1) * p and names[-(times + 1) * p:-times * p] == names[-p:]:
        times += 1
    use = min(200, max(1, times // 2))
    first = len(seg) - use * p
    units = [seg[first + u * p: first + (u + 1) * p] for u in range(use)]
    dur = [statistics.mean((u[i][1] - u[i][0]) / 1e3 for u in units) for i in range(p)]
    gaps = []
    for i in range(p):
        g = []
        for ui, u in enumerate(units):
            prev = u[i - 1][1] if i > 0 else (units[ui - 1][-1][1] if ui > 0 else seg[first - 1][1] if first > 0 else None)
            if prev is not None:
                g.append(max(0, u[i][0] - prev) / 1e3)
        gaps.append(statistics.mean(g) if g else 0.0)
    spans = [(units[u + 1][0][0] - units[u][0][0]) / 1e3 for u in range(use - 1)]
    span = statistics.median(spans) if spans else (units[0][-1][1] - units[0][0][0]) / 1e3
    busy = sum(dur)
    print(f"## {label}: {len(seg)} kernels over {(seg[-1][1] - seg[0][0]) / 1e6:.1f} ms; unit of {p} kernels repeats "
          f"{times} times at the end; averaged over the last {use}")
    print(f"unit span (median start to start) {span:.1f} µs; kernel time {busy:.1f} µs; idle {span - busy:.1f} µs")
    print("| # | kernel | µs | gap before µs |\n|---:|---|---:|---:|")
    for i in range(p):
        print(f"| {i} | {seg[first + i][2][:80]} | {dur[i]:.2f} | {gaps[i]:.2f} |")
    print()


def main():
    ks = load(sys.argv[1])
    mn = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    cut = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    print(f"{len(ks)} kernels in {sys.argv[1]}")
    n = 0
    for seg in segments(ks, cut * 1e6):
        if len(seg) >= mn:
            n += 1
            summarise(seg, f"segment {n}")


if __name__ == "__main__":
    main()
