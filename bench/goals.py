# The evaluation: each goal of loopdio checked against the medians of this one run, printed as
# PASS or MISS with the numbers. loopdio's better engine (higher geometric mean throughput over
# all workloads) is judged; the other engine's figure is shown beside it. qemu-nbd is taken
# strictly: its better mode (faster for throughput, lower for costs).

import math

from fio import WORKLOADS
from report import ENGINES, value

W = {w.name: w for w in WORKLOADS}
CONNS = ("randread-4k-qd32", "randread-4k-qd32-2conn", "randread-4k-qd32-4conn",
         "randread-4k-qd32-8conn")


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
    return m.get(key) if m and m["ok"] else None


def ref(med, targets, families, w, key, pick):
    """(name, value) picked among all targets of these families; None if any of them failed."""
    vals = [(t.name, metric(med, t.name, w, key)) for t in targets if t.family in families]
    if not vals or any(v is None for _, v in vals):
        return None
    return pick(vals, key=lambda nv: nv[1])


def fmt(w, key):
    if key == "tput":
        return lambda x: f"{x:,.0f} {w.unit}"
    if key == "rss_mib":
        return lambda x: f"{x:,.0f} MiB"
    return lambda x: f"{x:,.3g}"


def check(med, targets, eng, other, wname, key, families, factor, higher=True, target=None):
    """eng's figure against factor x the best (or lowest) of the families, or of one target."""
    w = W[wname]
    if target:
        r = (target, metric(med, target, w, key))
        r = None if r[1] is None else r
    else:
        r = ref(med, targets, families, w, key, max if higher else min)
    v, o = metric(med, eng, w, key), metric(med, other, w, key)
    if r is None or v is None:
        return False, "cannot evaluate: a target it needs failed"
    ok = v >= factor * r[1] if higher else v <= factor * r[1]
    f = fmt(w, key)
    rel = f"{v / r[1]:.2f}x" if r[1] else "inf"
    oth = f"{o / r[1]:.2f}x" if o is not None and r[1] else "failed"
    return ok, f"{eng} {f(v)} = {rel} {r[0]} {f(r[1])} ({other}: {oth})"


def absolute(med, eng, other, wname, key, limit):
    """eng's figure at or below an absolute limit."""
    w = W[wname]
    v, o = metric(med, eng, w, key), metric(med, other, w, key)
    if v is None:
        return False, "cannot evaluate: the target failed"
    oth = f"{o:.2f}" if o is not None else "failed"
    return v <= limit, f"{eng} {v:.2f} ({other}: {oth}), limit {limit}"


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
    goals = []
    for wn in CONNS:
        goals += [(f"{wn}: server CPU s/GiB <= qemu-nbd's", c(wn, "cpu_per_gib", ("qemu",), 1.0, higher=False)),
                  (f"{wn}: server csw/IO <= 1.0", absolute(med, eng, other, wn, "csw_per_io", 1.0)),
                  (f"{wn}: IOPS >= qemu-nbd's", c(wn, "tput", ("qemu",), 1.0))]
    goals.append(("randread-4k-qd32 IOPS >= 0.9x the loop device with --direct-io=on",
                  c("randread-4k-qd32", "tput", (), 0.9, target="loop-dio-on")))
    for w in WORKLOADS:
        if W[w.name].jobs > 1 or w.name in ("read-1m-qd8", "write-1m-qd8"):
            goals.append((f"{w.name}: server peak RSS <= qemu-nbd's",
                          c(w.name, "rss_mib", ("qemu",), 1.0, higher=False)))
    goals += [("read-1m-qd8 >= qemu-nbd's (no regression at 1M)", c("read-1m-qd8", "tput", ("qemu",), 1.0)),
              ("write-1m-qd8 >= qemu-nbd's (no regression at 1M)", c("write-1m-qd8", "tput", ("qemu",), 1.0)),
              ("page cache after a full sequential read through loopdio <= 1% of the image",
               page_cache_goal(foot, image_size, eng, other))]
    gm = {e: f"{s:,.0f}" if s > 0 else "failed" for e, s in scores.items()}
    head = (f"Judged engine: {eng} (geometric mean of its throughput over the workloads "
            f"{gm[eng]}, {other} {gm[other]}). qemu-nbd taken strictly: the better of its two "
            f"modes (faster for throughput, lower for costs and memory).")
    lines = [f"- **{'PASS' if ok else 'MISS'}** {name}: {txt}" for name, (ok, txt) in goals]
    return head, lines, sum(ok for _, (ok, _) in goals), len(goals)
