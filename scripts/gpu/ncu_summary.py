"""Summarise an `ncu --csv --metrics gpu__time_duration.sum` log of the attention benchmark (session 13, prepared for
session 14). The kernels' names repeat: once a layer when every layer runs the same kernels, else once a timed call.
Takes the smallest repeating unit at the end of the log (and how many times it repeats back to back there) and prints
its kernels grouped by name in order of first appearance: count, total µs, share, and the unit's sum.
Usage: python3 ncu_summary.py ncu.csv"""
import csv
import sys


def rows(path):
    with open(path, newline="") as fh:
        lines = [ln for ln in fh if ln.startswith('"')]  # ncu's own messages are not quoted
    out = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        us = v / 1000 if unit in ("ns", "nsecond") else v * 1000 if unit in ("ms", "msecond") else v
        out.append((int(r["ID"]), r["Kernel Name"], us))
    out.sort()
    return [(n, us) for _, n, us in out]


def period(names, most=20000):
    """The smallest p such that the last p names equal the p before them."""
    for p in range(1, min(most, len(names) // 2) + 1):
        if names[-p:] == names[-2 * p:-p]:
            return p
    return None


def main():
    ks = rows(sys.argv[1])
    names = [n for n, _ in ks]
    p = period(names)
    if p is None:
        print(f"no repeating unit in {len(ks)} kernels")
        return
    times = 1
    while len(names) >= (times + 1) * p and names[-(times + 1) * p:-times * p] == names[-p:]:
        times += 1
    last = ks[-p:]
    groups = {}
    for n, us in last:
        g = groups.setdefault(n, [0, 0.0])
        g[0] += 1
        g[1] += us
    total = sum(us for _, us in last)
    print(f"{len(ks)} kernels profiled; the last {p} repeat {times} times back to back at the end (one layer if that "
          f"is the number of layers times the calls); the last unit: {total:.1f} µs of kernel time")
    print("| kernel | count | µs | share |\n|---|---:|---:|---:|")
    for n, (c, us) in groups.items():
        print(f"| {n[:90]} | {c} | {us:.1f} | {us / total:.1%} |")


if __name__ == "__main__":
    main()
