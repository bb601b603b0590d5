# Turns the repeats of every cell into medians, the Markdown table with its ratio columns and
# the floor rows (what any blocking nbdkit plugin must cost), the table of page-cache
# footprints after a full read, and one bar chart per workload. The goal checks are in
# goals.py.

import statistics
import textwrap

from fio import WORKLOADS
from targets import BLOCKING, DEFAULT

PEERS = ("file", "qemu")                     # families the ratio "vs best peer" looks at
ENGINES = (DEFAULT, "loopdio-sync", "loopdio-libaio", "loopdio-io_uring", "loopdio-sync+libaio",
           "loopdio-sync+io_uring")
NO_SERVER = ("loop", "raw")                  # rows whose cost columns are the fio process's
METRICS = ("iops", "mibs", "p99_us", "mean_us", "cpu_per_gib", "csw_per_io", "vcsw_per_io",
           "cache_pct")


def derive(cell, image_size):
    """Adds the per-I/O and per-GiB figures to one repeat of one cell."""
    cell["cpu_per_gib"] = cell["cpu_s"] / (cell["bytes"] / 2**30)
    cell["csw_per_io"] = cell["csw"] / cell["ios"]
    cell["vcsw_per_io"] = None if cell["vcsw"] is None else cell["vcsw"] / cell["ios"]
    cell["cache_pct"] = 100 * cell["cache_bytes"] / image_size
    return cell


def median(values):
    """The median of the values that are known; None if none is (fio reports no voluntary
    switches of its own)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def medians(cells, targets):
    """{(target, workload): {"ok", "n", metric medians, "min", "max"} or {"ok": False, "error"}}"""
    out = {}
    for t in targets:
        for w in WORKLOADS:
            reps = [c for c in cells if c["target"] == t.name and c["workload"] == w.name]
            good = [c for c in reps if c["ok"]]
            if not good:
                err = next((c["error"] for c in reps), "not run")
                out[t.name, w.name] = {"ok": False, "error": err}
                continue
            m = {k: median([c[k] for c in good]) for k in METRICS}
            rss = [c["rss_mib"] for c in good if c.get("rss_mib") is not None]
            m["rss_mib"] = max(rss) if rss else None  # the peak over the repeats
            m["other_pct"] = max(c["other_pct"] + c["steal_pct"] for c in good)
            m["noisy"] = any(c["noisy"] for c in good)
            key = "mibs" if w.unit == "MiB/s" else "iops"
            m.update(ok=True, n=len(good), of=len(reps), cost_of=good[0]["cost_of"],
                     min=min(c[key] for c in good), max=max(c[key] for c in good))
            out[t.name, w.name] = m
    return out


def value(med, target, w):
    m = med.get((target, w.name))
    if not m or not m["ok"]:
        return None
    return m["mibs"] if w.unit == "MiB/s" else m["iops"]


def best_of(med, targets, families, w):
    """(name, value) of the fastest target of these families, or None if any of them failed."""
    vals = [(t.name, value(med, t.name, w)) for t in targets if t.family in families]
    if not vals or any(v is None for _, v in vals):
        return None
    return max(vals, key=lambda nv: nv[1])


def ratio(num, den):
    return "" if num is None or not den else f"{num / den:.2f}x"


def floor(med, w):
    """The floor row's {cpu_per_gib, csw_per_io}: nbdkit-null (the protocol, with no I/O)
    plus fio-blocking (the I/O, a thread and a wait per request), or None."""
    a, b = med.get(("nbdkit-null", w.name)), med.get((BLOCKING, w.name))
    if not (a and a["ok"] and b and b["ok"]):
        return None
    return {k: a[k] + b[k] for k in ("cpu_per_gib", "csw_per_io")}


def ratio_cells(med, targets, t, w):
    if t.name not in ENGINES:
        return ["", "", ""]
    v = value(med, t.name, w)
    peer = best_of(med, targets, PEERS, w)
    return [ratio(v, peer and peer[1]), ratio(v, value(med, "nbdkit-null", w)),
            ratio(v, value(med, "raw-fio", w))]


def row(med, targets, t, w, notes):
    m = med[t.name, w.name]
    if not m["ok"]:
        notes.append(f"{t.name} / {w.name}: {m['error']}")
        return [w.name, t.name, f"FAILED [{len(notes)}]"] + [""] * (len(HEAD) - 3)
    mark = "†" if t.family in NO_SERVER else ""
    n = "" if m["n"] == m["of"] else f" ({m['n']}/{m['of']} ok)"
    rss = "" if m.get("rss_mib") is None else f"{m['rss_mib']:,.0f}"
    f = floor(med, w)
    of_floor = ratio(m["cpu_per_gib"], f and f["cpu_per_gib"]) if m["cost_of"] == "server" else ""
    noise = f"{m['other_pct']:.1f}{' ⚠' if m['noisy'] else ''}"
    return [w.name, t.name, f"{m['iops']:,.0f}{n}", f"{m['mibs']:,.1f}", f"{m['p99_us']:,.0f}",
            f"{m['mean_us']:,.1f}", f"{m['cpu_per_gib']:.2f}{mark}", of_floor,
            f"{m['csw_per_io']:.2f}{mark}", rss, f"{m['cache_pct']:.1f}",
            noise] + ratio_cells(med, targets, t, w)


def floor_row(med, w):
    f = floor(med, w)
    if f is None:
        return [w.name, "floor", "cannot: nbdkit-null or fio-blocking failed"] + [""] * (len(HEAD) - 3)
    return ([w.name, "floor = nbdkit-null + fio-blocking", "", "", "", "", f"{f['cpu_per_gib']:.2f}",
             "1.00x", f"{f['csw_per_io']:.2f}"] + [""] * (len(HEAD) - 9))


HEAD = ["workload", "target", "IOPS", "MiB/s", "p99 µs", "mean µs", "CPU s/GiB", "CPU ÷ floor",
        "csw/IO", "peak RSS MiB", "cache % after", "others' CPU %", "vs best peer", "vs null",
        "vs raw fio"]


def table(med, targets):
    notes = []
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    names = {t.name for t in targets}
    for w in WORKLOADS:
        for t in targets:
            lines.append("| " + " | ".join(row(med, targets, t, w, notes)) + " |")
        if {"nbdkit-null", BLOCKING} <= names:
            lines.append("| " + " | ".join(floor_row(med, w)) + " |")
    lines += ["", LEGEND] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


LEGEND = (
    "Medians over the repeats. p99 = fio's completion-latency 99th percentile, mean = its "
    "mean total latency (submission included). CPU s/GiB and csw/IO are the NBD server "
    "process's (user+system CPU seconds per GiB moved, voluntary+involuntary context switches "
    "per I/O, all its threads counted, from wait4 after it stopped; one server per cell). "
    "peak RSS = the server process's maximum resident set over the repeats (VmHWM, read just "
    "before it is stopped). † = no server: the CPU and switches of fio's I/O jobs, as fio "
    "accounts them (its start-up and reporting left out; for the loop device the kernel's "
    "loop workers are NOT counted). fio-blocking = fio on the image with one thread per "
    "request the server holds (min(depth, --threads) per connection), each with one I/O in "
    "flight (libaio, depth 1); the floor row adds it to nbdkit-null: the cost any nbdkit "
    "plugin that blocks its worker thread must pay. CPU ÷ floor = the server's CPU s/GiB over "
    "the floor's. cache % = the image's page-cache footprint (fincore) after the run, caches "
    "dropped before. others' CPU % = the most that processes other than the benchmark's (and "
    "the hypervisor's steal) used of all the CPUs during the cell, over the repeats; ⚠ = "
    "above the limit. Writes end with fsync, inside the measured time. Ratio columns (loopdio "
    "engines only): throughput / the best of nbdkit file (both modes) and qemu-nbd (both "
    "engines), / nbdkit null (protocol ceiling), / fio O_DIRECT on the file (device "
    "ceiling).")


def footprint_table(foot, targets, image_size):
    lines = ["| target | full read MiB/s | page cache after (MiB) | % of image |", "|---|---|---|---|"]
    for t in targets:
        if t.kind == "blocking":
            continue    # no full read: its jobs would each read a slice
        f = foot.get(t.name, {"ok": False, "error": "not run"})
        if not f["ok"]:
            lines.append(f"| {t.name} | FAILED: {f['error'][:120]} | | |")
            continue
        lines.append(f"| {t.name} | {f['mibs']:,.0f} | {f['cache_bytes'] / 2**20:,.1f} "
                     f"| {100 * f['cache_bytes'] / image_size:.2f} |")
    return "\n".join(lines)


COLORS = {"loopdio": "#1f77b4", "file": "#ff7f0e", "qemu": "#2ca02c", "loop": "#9467bd",
          "null": "#7f7f7f", "raw": "#8c564b"}


def plot(med, targets, outdir, subtitle):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for w in WORKLOADS:
        fig, ax = plt.subplots(figsize=(11, 4.8))
        names = [t.name for t in targets]
        vals = [value(med, n, w) or 0 for n in names]
        bars = ax.bar(names, vals, color=[COLORS[t.family] for t in targets])
        for t, b, v in zip(targets, bars, vals):
            m = med[t.name, w.name]
            if m["ok"]:
                ax.errorbar(b.get_x() + b.get_width() / 2, v, fmt="none", ecolor="black",
                            yerr=[[v - m["min"]], [m["max"] - v]], capsize=3)
            top = m["max"] if m["ok"] else 0      # above the error bar
            ax.annotate(f"{v:,.0f}" if m["ok"] else "failed", (b.get_x() + b.get_width() / 2, top),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        ax.set_ylabel(w.unit + " (median, bars: min-max)")
        conns = f"{w.jobs} connection{'s' if w.jobs > 1 else ''}"
        ax.set_title(f"{w.name}  ({conns})\n" + textwrap.fill(subtitle, 160), fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
        fig.tight_layout()
        fig.savefig(f"{outdir}/{w.name}.png", dpi=100)
        plt.close(fig)
