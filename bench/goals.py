# The evaluation: each goal of loopdio checked against the medians of this one run, printed as
# PASS, NOISE or MISS with the numbers. The engine judged is loopdio's default (the one a user
# gets when naming none); the explicit engines are shown beside it. qemu-nbd is taken
# strictly: its better mode (faster for throughput, lower for costs).
#
# NOISE: the run measures its own noise, as the default engine also runs under its explicit
# name (loopdio-default and, say, loopdio-sync+libaio are one configuration). The median
# difference between the two over the 4k goal workloads is the band within which this run
# cannot tell two figures apart: a goal missed by less than that is NOISE, not PASS.

import statistics

from fio import WORKLOADS
from report import ENGINES, floor, value
from targets import DEFAULT

W = {w.name: w for w in WORKLOADS}
CONNS = {rw: [f"{rw}-4k-qd32{'' if n == 1 else f'-{n}conn'}" for n in (1, 2, 4, 8)]
         for rw in ("randread", "randwrite")}
OTHERS = [e for e in ENGINES if e != DEFAULT]     # shown beside the judged engine
# What the default must match at 4k QD32 on every number of connections: loopdio's own sync
# engine (a pread per request, nothing else) and nbdkit's file plugin keeping no pages.
BASELINES = ("loopdio-sync", "nbdkit-file-cache=none")


def metric(med, target, w, key):
    if key == "tput":
        return value(med, target, w)
    m = med.get((target, w.name))
    return m.get(key) if m and m["ok"] else None


def fmt(w, key):
    if key == "tput":
        return lambda x: f"{x:,.0f} {w.unit}"
    if key == "rss_mib":
        return lambda x: f"{x:,.0f} MiB"
    return lambda x: f"{x:,.3g}"


def beside(med, w, key, ref):
    """The explicit engines' figures as multiples of ref, for the reader."""
    parts = []
    for e in OTHERS:
        o = metric(med, e, w, key)
        parts.append(f"{e.removeprefix('loopdio-')} {o / ref:.2f}x" if o is not None and ref
                     else f"{e.removeprefix('loopdio-')} failed")
    return "; ".join(parts)


def noise_band(med, engine, key):
    """The median relative difference, over the 4k goal workloads, between loopdio-default
    and the same engine named explicitly (loopdio-ENGINE); None when there is no such row."""
    twin = f"loopdio-{engine}"
    diffs = []
    for wn in CONNS["randread"] + CONNS["randwrite"]:
        a, b = metric(med, DEFAULT, W[wn], key), metric(med, twin, W[wn], key)
        if a is not None and b:
            diffs.append(abs(a / b - 1))
    return statistics.median(diffs) if diffs else None


BAND = {}   # key ("tput", "cpu_per_gib") -> this run's noise band, set by goal_lines


def verdict(v, r, factor, higher, band):
    if (v >= factor * r) if higher else (v <= factor * r):
        return "PASS"
    if band and ((v >= factor * r * (1 - band)) if higher else (v <= factor * r * (1 + band))):
        return "NOISE"
    return "MISS"


def check(med, targets, wname, key, refs, factor=1.0, higher=True):
    """The default's figure against factor x the strictest of the reference targets (the
    highest for throughput, the lowest for costs). refs: target names, or a family."""
    w = W[wname]
    names = [t.name for t in targets if t.name in refs or t.family in refs]
    vals = [(n, metric(med, n, w, key)) for n in names]
    v = metric(med, DEFAULT, w, key)
    if not vals or v is None or any(x is None for _, x in vals):
        return "MISS", "cannot evaluate: a target it needs failed or was not run"
    name, r = (max if higher else min)(vals, key=lambda nv: nv[1])
    ok = verdict(v, r, factor, higher, BAND.get(key))
    f = fmt(w, key)
    rel = f"{v / r:.2f}x" if r else "inf"
    rest = [f"{n} {f(x)}" for n, x in vals if n != name]
    return ok, (f"{DEFAULT} {f(v)} = {rel} {name} {f(r)}"
                + (f" ({', '.join(rest)})" if rest else "") + f" [{beside(med, w, key, r)}]")


def floor_check(med, wname, factor):
    w = W[wname]
    f, v = floor(med, w), metric(med, DEFAULT, w, "cpu_per_gib")
    if f is None or v is None:
        return "MISS", "cannot evaluate: nbdkit-null, fio-blocking or loopdio failed or not run"
    r = f["cpu_per_gib"]
    return verdict(v, r, factor, False, BAND.get("cpu_per_gib")), (f"{DEFAULT} {v:.2f} CPU s/GiB = {v / r:.2f}x the floor {r:.2f} "
                             f"(limit {factor:g}x) [{beside(med, w, 'cpu_per_gib', r)}]")


def page_cache_goal(foot, image_size):
    f = foot.get(DEFAULT)
    if not f or not f["ok"]:
        return "MISS", "cannot evaluate: the full read failed or was not run"
    pct = 100 * f["cache_bytes"] / image_size
    rest = ", ".join(f"{e} {100 * foot[e]['cache_bytes'] / image_size:.2f}%"
                     for e in OTHERS if foot.get(e, {}).get("ok"))
    return "PASS" if f["cache_bytes"] == 0 else "MISS", f"{DEFAULT} {pct:.2f}% of the image cached ({rest})"


def goal_lines(med, foot, targets, image_size, engine=None):
    BAND.clear()
    for key in ("tput", "cpu_per_gib"):
        b = noise_band(med, engine, key) if engine else None
        if b is not None:
            BAND[key] = b
    goals = []
    for rw in ("randread", "randwrite"):
        for wn in CONNS[rw]:
            goals += [(f"{wn}: IOPS >= loopdio-sync's and nbdkit-file-cache=none's",
                       check(med, targets, wn, "tput", BASELINES)),
                      (f"{wn}: server CPU s/GiB <= loopdio-sync's and nbdkit-file-cache=none's",
                       check(med, targets, wn, "cpu_per_gib", BASELINES, higher=False))]
    for wn in (CONNS["randread"][0], CONNS["randwrite"][0]):
        goals.append((f"{wn} (one connection): IOPS >= qemu-nbd's",
                      check(med, targets, wn, "tput", ("qemu",))))
    for wn in ("read-1m-qd8", "write-1m-qd8"):
        goals.append((f"{wn}: MiB/s >= qemu-nbd's", check(med, targets, wn, "tput", ("qemu",))))
    for wn in (CONNS["randread"][2], CONNS["randwrite"][2]):
        goals.append((f"{wn}: server CPU s/GiB <= 2x the floor (nbdkit-null + fio-blocking)",
                      floor_check(med, wn, 2.0)))
    for w in WORKLOADS:
        if w.jobs > 1 or w.name in ("read-1m-qd8", "write-1m-qd8"):
            goals.append((f"{w.name}: server peak RSS <= qemu-nbd's",
                          check(med, targets, w.name, "rss_mib", ("qemu",), higher=False)))
    goals.append(("page cache after a full sequential read through loopdio: none of the image",
                  page_cache_goal(foot, image_size)))
    head = (f"Judged: {DEFAULT}, loopdio with no aio= parameter (engine: {engine or 'unknown'}); "
            f"the explicit engines' figures are in brackets, as multiples of the same "
            f"reference. qemu-nbd taken strictly: the better of its two modes (faster for "
            f"throughput, lower for costs and memory).")
    if BAND:
        head += (f" This run's noise: {DEFAULT} and loopdio-{engine} (one configuration) "
                 f"differed by {100 * BAND.get('tput', 0):.0f}% in IOPS and "
                 f"{100 * BAND.get('cpu_per_gib', 0):.0f}% in CPU s/GiB (medians over the 4k "
                 f"goal workloads); a goal missed by less is NOISE (not told apart), not PASS.")
    lines = [f"- **{ok}** {name}: {txt}" for name, (ok, txt) in goals]
    count = {v: sum(ok == v for _, (ok, _) in goals) for v in ("PASS", "NOISE", "MISS")}
    return head, lines, count, len(goals)
