#!/usr/bin/env python3
"""One layer of a trace.c timeline in full (session 17): every kernel, memcpy and memset between the N-th last and the
(N-1)-th last start of kernel NAME, in device start order, with its stream, its offset and duration (µs), the idle time
before it, and the host's driver call that launched it (by correlation id: when the call began and ended, µs from
the window's start; "-" when the trace holds no driver record).
usage: window.py TRACE NAME [N=3]"""
import sys

recs, drv = [], {}
for line in open(sys.argv[1], errors="replace"):
    if not line.endswith("\n"):
        continue
    f = line.rstrip("\n").split("\t")
    if f[0] == "K" and len(f) >= 8:
        recs.append((int(f[1]), int(f[2]), "K", int(f[3]), int(f[4]), f[7][:70]))
    elif f[0] == "M" and len(f) >= 7:
        recs.append((int(f[1]), int(f[2]), "M", int(f[3]), int(f[4]), f"memcpy {f[5]} B kind {f[6]}"))
    elif f[0] == "S" and len(f) >= 6:
        recs.append((int(f[1]), int(f[2]), "S", int(f[3]), int(f[4]), f"memset {f[5]} B"))
    elif f[0] == "D" and len(f) >= 6:
        drv[int(f[4])] = (int(f[1]), int(f[2]), int(f[5]))
recs.sort()
name, n = sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3
starts = [i for i, r in enumerate(recs) if r[2] == "K" and r[5] == name[:70]]
if len(starts) < n:
    print("too few", name)
    sys.exit(0)
a, b = starts[-n], starts[-n + 1]
t0, end = recs[a][0], None
print(f"| type | stream | start µs | dur µs | idle before µs | driver call µs (begin–end, cbid) | what |\n|---|---:|---:|---:|---:|---|---|")
for r in recs[a:b + 1]:
    idle = 0.0 if end is None else max(0, r[0] - end) / 1e3
    d = drv.get(r[4])
    dc = f"{(d[0] - t0) / 1e3:.1f}–{(d[1] - t0) / 1e3:.1f} ({d[2]})" if d else "-"
    print(f"| {r[2]} | {r[3]} | {(r[0] - t0) / 1e3:.1f} | {(r[1] - r[0]) / 1e3:.2f} | {idle:.2f} | {dc} | {r[5]} |")
    end = r[1] if end is None else max(end, r[1])
