# The evaluation: each goal of loopdio checked against the medians of this one run, printed as
# PASS or MISS with the numbers. loopdio's better engine (higher geometric mean throughput over
# all workloads) is judged; the other engine's figure is shown beside it. Peers are taken
# strictly: the best of both modes of a peer for throughput, the lowest for costs.

import math

from fio import WORKLOADS
from report import ENGINES, value

W = {w.name: w for w in WORKLOADS}


def best_engine(med):
    def score(e):
        vals = [value(med, e, w) for w in WORKLOADS]
        if any(v is None or v <= 0 for v in vals):
            return -1.0
        return math.exp(sum(math.log(v) for v in vals) / len(vals))
    scores = {e: score(e) for e in ENGINES}
    best = max(ENGINES, key=lambda e: scores[e])
    return best, scores


def metric(med, target, w, key):
    if key == "tput":
        return value(med, target, w)
    m = med.get((target, w.name))
    return m[key] if m and m["ok"] else None


def ref(med, targets, families, w, key, pick):
    """(name, value) picked among all targets of these families; None if any of them failed."""
    vals = [(t.name, metric(med, t.name, w, key)) for t in targets if t.family in families]
    if not vals or any(v is None for _, v in vals):
        return None
    return pick(vals, key=lambda nv: nv[1])


def check(med, targets, eng, other, wname, key, families, factor, higher=True):
    """One comparison: eng's figure against factor x the best (or lowest) of the families."""
    w = W[wname]
    pick = max if (higher and key == "tput") else min
    r = ref(med, targets, families, w, key, pick)
    v, o = metric(med, eng, w, key), metric(med, other, w, key)
    if r is None or v is None:
        return False, "cannot evaluate: a target it needs failed"
    ok = v >= factor * r[1] if higher else v <= factor * r[1]
    fmt = (lambda x: f"{x:,.0f} {w.unit}") if key == "tput" else (lambda x: f"{x:,.3g}")
    rel = f"{v / r[1]:.2f}x" if r[1] else "inf"
    oth = f"{o / r[1]:.2f}x" if o is not None and r[1] else "failed"
    return ok, f"{eng} {fmt(v)} = {rel} {r[0]} {fmt(r[1])} ({other}: {oth})"


def page_cache_goal(foot, image_size, eng, other):
    def pct(e):
        f = foot.get(e)
        return 100 * f["cache_bytes"] / image_size if f and f["ok"] else None
    p, o = pct(eng), pct(other)
    if p is None:
        return False, "cannot evaluate: the full read failed"
    oth = f"{o:.2f}%" if o is not None else "failed"
    return p <= 1.0, f"{eng} {p:.2f}% of the image cached ({other}: {oth})"


def goal_lines(med, foot, targets, image_size):
    eng, scores = best_engine(med)
    other = ENGINES[1 - ENGINES.index(eng)]

    def c(*a, **k):
        return check(med, targets, eng, other, *a, **k)
    goals = [("page cache after a full sequential read through loopdio <= 1% of the image",
              page_cache_goal(foot, image_size, eng, other))]
    for wn in ("randread-4k-qd32", "randread-4k-qd32-4conn"):
        goals += [(f"{wn} >= 1.5x the best of nbdkit file and qemu-nbd", c(wn, "tput", ("file", "qemu"), 1.5)),
                  (f"{wn} >= 0.75x nbdkit null", c(wn, "tput", ("null",), 0.75))]
    goals += [("read-1m-qd8 >= nbdkit file plugin (cold cache)", c("read-1m-qd8", "tput", ("file",), 1.0)),
              ("read-1m-qd8 >= 5x qemu-nbd", c("read-1m-qd8", "tput", ("qemu",), 5.0)),
              ("read-1m-qd8 >= 0.8x min(null, raw fio)", min_ceiling(med, eng, other))]
    for wn in ("randwrite-4k-qd32", "write-1m-qd8"):
        goals += [(f"{wn} >= 1.5x qemu-nbd --cache=none", c(wn, "tput", ("qemu",), 1.5)),
                  (f"{wn} >= nbdkit file plugin", c(wn, "tput", ("file",), 1.0))]
    for w in WORKLOADS:
        goals += [(f"{w.name}: server csw/IO <= nbdkit file plugin's",
                   c(w.name, "csw_per_io", ("file",), 1.0, higher=False)),
                  (f"{w.name}: server CPU s/GiB <= nbdkit file plugin's",
                   c(w.name, "cpu_per_gib", ("file",), 1.0, higher=False))]
    goals.append(("randread-4k-qd1 mean latency within 10% of the best NBD peer's",
                  c("randread-4k-qd1", "mean_us", ("file", "qemu"), 1.10, higher=False)))
    gm = {e: f"{s:,.0f}" if s > 0 else "failed" for e, s in scores.items()}
    head = (f"Judged engine: {eng} (geometric mean of its throughput over the workloads "
            f"{gm[eng]}, {other} {gm[other]}). Peers taken strictly: the best of both modes "
            f"for throughput, the lowest for costs and latency.")
    lines = [f"- **{'PASS' if ok else 'MISS'}** {name}: {txt}" for name, (ok, txt) in goals]
    return head, lines, sum(ok for _, (ok, _) in goals), len(goals)


def min_ceiling(med, eng, other):
    """read-1m-qd8 against 0.8x the lower of the two ceilings (null plugin, raw fio)."""
    w = W["read-1m-qd8"]
    ceil = [(n, value(med, n, w)) for n in ("nbdkit-null", "raw-fio")]
    v, o = value(med, eng, w), value(med, other, w)
    if v is None or any(x is None for _, x in ceil):
        return False, "cannot evaluate: a target it needs failed"
    name, low = min(ceil, key=lambda nv: nv[1])
    oth = f"{o / low:.2f}x" if o is not None else "failed"
    return v >= 0.8 * low, f"{eng} {v:,.0f} MiB/s = {v / low:.2f}x {name} {low:,.0f} MiB/s ({other}: {oth})"
