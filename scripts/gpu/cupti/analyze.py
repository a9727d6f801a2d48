#!/usr/bin/env python3
"""Summarises a trace.c timeline: splits it into steps at device-to-host copies (each engine step ends by
reading a token or a few logits back), picks the steps of the most common kernel count (the decode steps),
and prints per step: kernels, span, GPU busy time, idle gaps inside the step, and the host time between
steps; then the median step's kernels grouped by name (count, total and mean microseconds).
usage: analyze.py TRACE [MIN_KERNELS] [TSV_OUT]; EACH=N summarises every kernel count shared by at least N steps"""
import collections, statistics, sys

path = sys.argv[1]
min_k = int(sys.argv[2]) if len(sys.argv) > 2 else 50
tsv = sys.argv[3] if len(sys.argv) > 3 else None
K, M, D = [], [], {}
for line in open(path, errors="replace"):
    if not line.endswith("\n"):
        continue  # the last line of a trace cut by the program's exit
    f = line.rstrip("\n").split("\t")
    if f[0] == "K" and len(f) >= 8:
        K.append((int(f[1]), int(f[2]), f[7], f[5], f[6], int(f[4])))
    elif f[0] == "M" and len(f) >= 7:
        M.append((int(f[1]), int(f[2]), int(f[5]), int(f[6])))
    elif f[0] == "D" and len(f) >= 6:
        D[int(f[4])] = (int(f[1]), int(f[2]))
    elif f[0] == "X":
        print("dropped records:", f[2])
K.sort()
d2h = sorted(m for m in M if m[3] == 2)
print(f"{len(K)} kernels, {len(M)} copies ({len(d2h)} device-to-host)")
segs, j, cur, prev_end = [], 0, [], None
bounds = [m[0] for m in d2h]
import bisect
groups = collections.defaultdict(list)
for k in K:
    i = bisect.bisect_right(bounds, k[0])
    groups[i].append(k)
steps = []
for i, ks in sorted(groups.items()):
    if len(ks) < min_k:
        continue
    prev = d2h[i - 1][1] if i > 0 else None
    nxt = d2h[i][0] if i < len(d2h) else None
    steps.append((i, ks, prev, nxt))
if not steps:
    sys.exit("no steps")
if "ALL" in __import__("os").environ:
    # Every step: kernels, span, busy, the host gap before it (from the previous copy) and the wait after.
    for i, ks, prev, nxt in steps:
        busy, end = 0, 0
        for k in ks:
            busy += max(0, k[1] - max(k[0], end))
            end = max(end, k[1])
        big = sorted(ks, key=lambda k: k[0] - k[1])[:3]
        print(f"step {i}: {len(ks)} kernels, span {(ks[-1][1]-ks[0][0])/1e3:.1f} us, busy {busy/1e3:.1f} us, "
              f"host gap before {((ks[0][0]-prev)/1e3 if prev else 0):.1f} us, to the copy after "
              f"{((nxt-ks[-1][1])/1e3 if nxt else 0):.1f} us; longest: " +
              ", ".join(f"{k[2][:40]} {(k[1]-k[0])/1e3:.0f}" for k in big))
mode = collections.Counter(len(s[1]) for s in steps).most_common(6)
print("most common kernels per step:", mode)
def summarise(n, tsv):
    dec = [s for s in steps if len(s[1]) == n]
    rows = []
    for i, ks, prev, nxt in dec:
        span = ks[-1][1] - ks[0][0]
        busy, end = 0, 0
        gaps = 0
        for s, e, *_ in ks:  # noqa
            if s > end:
                if end:
                    gaps += s - end
                busy += e - s
            else:
                busy += max(0, e - end)
            end = max(end, e)
        lead = ks[0][0] - prev if prev else 0
        tail = nxt - ks[-1][1] if nxt else 0
        # Host side: how long before its kernel started was each launch call made (D records, if traced)?
        lag = [k[0] - D[k[5]][1] for k in ks if k[5] in D]
        api = [D[k[5]][1] - D[k[5]][0] for k in ks if k[5] in D]
        host = (D[ks[-1][5]][1] - D[ks[0][5]][0]) if ks[0][5] in D and ks[-1][5] in D else 0
        rows.append((span, busy, gaps, lead, tail, statistics.median(lag) if lag else 0,
                     statistics.median(api) if api else 0, host))
    def med(ix):
        return statistics.median(r[ix] for r in rows) / 1e3
    print(f"{len(dec)} steps of {n} kernels: median span {med(0):.1f} us, GPU busy {med(1):.1f} us, "
          f"idle gaps inside {med(2):.1f} us, host time before the first kernel {med(3):.1f} us, "
          f"after the last kernel to the copy {med(4):.1f} us")
    if D:
        print(f"launches: median lag from launch call to kernel start {med(5):.1f} us, launch call {med(6):.2f} us, "
              f"host time from first to last launch {med(7):.1f} us")
    # The median step by span.
    order = sorted(range(len(dec)), key=lambda x: rows[x][0])
    i, ks, prev, nxt = dec[order[len(order) // 2]]
    by = collections.OrderedDict()
    for s, e, name, grid, block, _ in ks:
        key = name[:90]
        c = by.setdefault(key, [0, 0, grid, block])
        c[0] += 1
        c[1] += e - s
    tot = sum(c[1] for c in by.values())
    print(f"median step, kernel time {tot/1e3:.1f} us, by kernel (sorted by total):")
    print(f"{'count':>5} {'total us':>9} {'mean us':>8}  grid / block  name")
    for key, (c, t, grid, block) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"{c:5d} {t/1e3:9.1f} {t/c/1e3:8.2f}  {grid} / {block}  {key}")
    if tsv:
        with open(tsv, "w") as w:
            w.write("start_us\tdur_us\tgap_us\tgrid\tblock\tname\n")
            t0, end = ks[0][0], ks[0][0]
            for s, e, name, grid, block, _ in ks:
                w.write(f"{(s-t0)/1e3:.2f}\t{(e-s)/1e3:.2f}\t{max(0,s-end)/1e3:.2f}\t{grid}\t{block}\t{name[:160]}\n")
                end = max(end, e)

if "EACH" in __import__("os").environ:
    # Every kernel count that at least EACH steps share (e.g. dense, squeezed and hierarchical decode steps
    # of one bench run), each summarised as the most common one is.
    for n, c in mode:
        if c >= int(__import__("os").environ["EACH"]):
            print(f"\n===== steps of {n} kernels ({c} steps)")
            summarise(n, f"{tsv[:-4]}-{n}.tsv" if tsv else None)
else:
    summarise(mode[0][0], tsv)
