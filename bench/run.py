#!/usr/bin/python3
# Side-by-side benchmark: fio against loopdio, nbdkit's file and null plugins, qemu-nbd, the
# kernel loop device and the raw file, all on one freshly written image, on a machine it first
# checks is quiet. Writes a Markdown table, the goal checks, PNG plots and every repeat as
# JSON into bench/results/<timestamp>/.

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fio                      # noqa: E402
import goals                    # noqa: E402
import quiet                    # noqa: E402
import report                   # noqa: E402
import targets as tg            # noqa: E402

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__ or "loopdio side-by-side benchmark")
    p.add_argument("--quick", action="store_true", help="256M image, 0.3 s cells, 1 repeat")
    p.add_argument("--dir", default="/var/tmp", help="where the image lives (its filesystem)")
    p.add_argument("--plugin", help="loopdio.so to use (default: build with scripts/build.sh)")
    p.add_argument("--nbdkit", help="nbdkit for loopdio, file and null (default: the one "
                   "loopdio is built against, nbdkit.pc's prefix/sbin/nbdkit)")
    p.add_argument("--threads", type=int, default=16,
                   help="nbdkit --threads for every nbdkit (default: nbdkit's own default)")
    p.add_argument("--runtime", type=float, help="seconds per cell (default 3, quick 0.3)")
    p.add_argument("--repeats", type=int, help="repeats per cell (default 3, quick 1)")
    p.add_argument("--size", help="image size (default 4G, quick 512M)")
    p.add_argument("--only", help="comma-separated target names (for development)")
    p.add_argument("--workloads", help="comma-separated workload names (for development)")
    p.add_argument("--max-load", type=float, default=0.5,
                   help="highest 1-minute load average to start at (default 0.5)")
    p.add_argument("--max-other", type=float, default=5.0,
                   help="highest %% of the CPUs that other processes (and the hypervisor's "
                   "steal) may use during a cell (default 5)")
    p.add_argument("--settle", type=float, default=300,
                   help="seconds to wait for a quiet machine before giving up (default 300)")
    p.add_argument("--retries", type=int, default=2,
                   help="times a cell disturbed by other work is run again (default 2)")
    p.add_argument("--report", metavar="DIR",
                   help="write DIR/results.md and the charts again from DIR/results.json (after "
                   "a change to the report or the goals); measures nothing")
    p.add_argument("--noisy", action="store_true",
                   help="run on a busy machine anyway: the results are marked INVALID")
    a = p.parse_args()
    a.runtime = a.runtime or (0.3 if a.quick else 3)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.size = parse_size(a.size or ("256M" if a.quick else "4G"))
    return a


def parse_size(s):
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def plugin_path(a):
    if a.plugin:
        return os.path.abspath(a.plugin)
    subprocess.run([f"{TOP}/scripts/build.sh"], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(os.environ.get("LOOPDIO_BUILD_DIR", f"{TOP}/build"), "loopdio.so")


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def nbdkit_path(a, plugins=("file", "null")):
    """The nbdkit every nbdkit target runs, by absolute path: the build's (as CMake finds it),
    not whichever is first on PATH. It must be >= 1.34 (1.32.4 to 1.33.9 abort when a client
    hangs up with requests queued) and have the peers' plugins in its own plugin directory."""
    path = a.nbdkit or os.path.join(sh("pkg-config", "--variable=prefix", "nbdkit"), "sbin", "nbdkit")
    m = os.access(path, os.X_OK) and re.match(r"nbdkit (\d+)\.(\d+)\S*", sh(path, "--version"))
    if not m:
        sys.exit(f"bench/run.py: {path} is no nbdkit (scripts/nbdkit.sh installs one)")
    if (int(m[1]), int(m[2])) < (1, 34):
        sys.exit(f"bench/run.py: {path} is {m[0]}; loopdio needs 1.34 or later")
    for p in plugins:
        if subprocess.run([path, "--dump-plugin", p], capture_output=True).returncode != 0:
            sys.exit(f"bench/run.py: {path} has no {p} plugin")
    return os.path.abspath(path)


def machine(a, plugin):
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rev = sh("git", "-C", TOP, "describe", "--always", "--dirty")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
        "mem_gib": round(mem / 2**30, 1), "kernel": os.uname().release,
        "fs": " ".join(sh("findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", a.dir).split()),
        "dir": a.dir, "fio": sh("fio", "--version"),
        "nbdkit": f"{sh(a.nbdkit, '--version')} ({a.nbdkit})",
        "qemu": sh("qemu-nbd", "--version").splitlines()[0], "loopdio": rev, "plugin": plugin,
        "threads": a.threads, "runtime_s": a.runtime, "repeats": a.repeats,
        "image_bytes": a.size, "mode": "quick" if a.quick else "full",
        "max_load": a.max_load, "max_other_pct": a.max_other,
    }


def header(m):
    return (f"{m['date']} | {m['nproc']} CPUs, {m['mem_gib']} GiB, kernel {m['kernel']} | image "
            f"{m['image_bytes'] / 2**30:g} GiB on {m['fs']} ({m['dir']}) | {m['fio']}, "
            f"{m['nbdkit']}, {m['qemu']} | nbdkit --threads {m['threads']} | "
            f"{m['runtime_s']:g} s per cell, {m['repeats']} repeat(s), median | loopdio {m['loopdio']}, "
            f"default engine {m.get('default_engine', '?')}")


def quiet_line(m, cells=None):
    """The machine's quiet check: before the run, and over the cells once they have run."""
    s = (f"Quiet check: load average {m['loadavg_start']:.2f} at the first cell (limit "
         f"{m['max_load']:g}), other processes {m['idle_other_pct']:.1f}% of the CPUs and steal "
         f"{m['idle_steal_pct']:.1f}% over 5 s before it")
    if cells:
        other = sorted(c["other_pct"] for c in cells)
        steal = max(c["steal_pct"] for c in cells)
        noisy = [c for c in cells if c["noisy"]]
        s += (f"; during the cells other processes used {statistics.median(other):.1f}% of the "
              f"CPUs (median), {other[-1]:.1f}% at most, steal {steal:.1f}% at most (limit "
              f"{m['max_other_pct']:g}% per cell, {sum(c['tries'] - 1 for c in cells)} cell(s) "
              f"run again); {len(noisy)} cell(s) disturbed")
    return s + "."


def verdict(m, cells):
    """'' when the run is valid, else why it is not."""
    why = []
    if not m["quiet_start"]:
        why.append("the machine was not quiet at the start (--noisy)")
    noisy = [c for c in cells if c["noisy"]]
    if noisy:
        names = ", ".join(f"{c['workload']}/{c['target']}" for c in noisy[:6])
        why.append(f"{len(noisy)} cell(s) ran while other work used more than "
                   f"{m['max_other_pct']:g}% of the CPUs ({names}{', ...' if len(noisy) > 6 else ''})")
    return "; ".join(why)


def run_cell(t, w, runtime, image, a, work):
    """One fio run against a fresh server (or loop device) after dropping caches, watched for
    other work on the machine; run again (up to --retries times) when it was disturbed."""
    for tries in range(1, a.retries + 2):
        fio.drop_caches()
        watch = quiet.Watch()
        cell = one_cell(t, w, runtime, image, a, work)
        cell.update(watch.stop(), tries=tries)
        cell["noisy"] = cell["other_pct"] + cell["steal_pct"] > a.max_other
        if not cell["noisy"] or not cell["ok"]:
            break
    return cell


def one_cell(t, w, runtime, image, a, work):
    inst = tg.bring_up(t, image, a.size, a.threads, work, a.nbdkit)
    cell = {"target": t.name, "workload": w.name, "ok": False}
    load = fio.blocking(w, a.threads) if t.kind == "blocking" else w
    try:
        cell.update(fio.run_fio(load, runtime, inst.start(), work, a.size), ok=True)
        cell["cache_bytes"] = fio.cached_bytes(image)
    except tg.TargetFailed as e:
        cell["error"] = str(e)
    except fio.FioFailed as e:
        cell["error"] = str(e) + (f" | server: {inst.log_tail()}" if isinstance(inst, tg.Server) else "")
    finally:
        cost = inst.stop()
    if cell["ok"] and cost:
        cell.update(cpu_s=cost["cpu_s"], csw=cost["csw"], vcsw=cost["vcsw"],
                    rss_mib=cost["rss_mib"], cost_of="server")
    elif cell["ok"]:
        cell.update(cpu_s=cell["jobs_cpu_s"], csw=cell["jobs_csw"], vcsw=None, rss_mib=None,
                    cost_of="fio")
    return report.derive(cell, a.size) if cell["ok"] else cell


def progress(i, n, cell, t0):
    what = (f"{cell['iops']:>9,.0f} IOPS {cell['mibs']:>8,.1f} MiB/s csw/IO {cell['csw_per_io']:.2f}"
            if cell["ok"] else f"FAILED: {cell['error'][:150]}")
    noise = f" others {cell['other_pct']:4.1f}%{' NOISY' if cell['noisy'] else ''}"
    again = f" (try {cell['tries']})" if cell["tries"] > 1 else ""
    print(f"[{i:3}/{n}] {time.monotonic() - t0:6.0f}s rep{cell['rep']} {cell['workload']:<24}"
          f"{cell['target']:<24}{what}{noise}{again}", flush=True)


def footprint(t, image, a, work):
    """Reads the whole image once through the target from a cold cache, then fincore."""
    cell = run_cell(t, fio.FULL_READ, None, image, a, work)
    keep = ("ok", "error", "mibs", "cache_bytes", "other_pct", "steal_pct", "noisy", "tries")
    return {k: cell[k] for k in keep if k in cell}


def measure(a, ts, image, work):
    cells, t0 = [], time.monotonic()
    n = a.repeats * len(fio.WORKLOADS) * len(ts)
    for rep in range(1, a.repeats + 1):
        for w in fio.WORKLOADS:     # targets interleaved, so noise spreads over all of them
            for t in ts:
                cell = run_cell(t, w, a.runtime, image, a, work)
                cell["rep"] = rep
                cells.append(cell)
                progress(len(cells), n, cell, t0)
    foot = {}
    for t in ts:
        if t.kind == "blocking":
            continue    # its jobs would read slices of the image: not one full read
        foot[t.name] = footprint(t, image, a, work)
        print(f"full read {t.name:<24}{foot[t.name]}", flush=True)
    return cells, foot


def write_results(a, m, ts, cells, foot, elapsed, out=None):
    """Writes results.md, results.json and the charts into out (a new directory under
    bench/results, pointed at by bench/results/latest, when None)."""
    root = os.path.join(TOP, "bench", "results")
    stamp = None
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join(root, stamp)
        os.makedirs(out)
    med = report.medians(cells, ts)
    checked = cells + [dict(f, workload=fio.FULL_READ.name, target=t) for t, f in foot.items()]
    invalid = verdict(m, checked)
    head, lines, count, ngoals = goals.goal_lines(med, foot, ts, a.size, m.get("default_engine"))
    m["elapsed_s"], m["loadavg_end"], m["invalid"] = round(elapsed), os.getloadavg()[0], invalid
    banner = ([f"**INVALID: {invalid}. Do not draw conclusions from these figures.**", ""]
              if invalid else [])
    md = "\n".join([
        "# loopdio side-by-side benchmark", "", *banner, header(m), "", quiet_line(m, checked), "",
        report.table(med, ts), "", "## Page cache after one full sequential read (1M, QD8, cold)",
        "", report.footprint_table(foot, ts, a.size), "",
        f"## Evaluation: {count['PASS']}/{ngoals} PASS, {count['NOISE']} within the run's noise, "
        f"{count['MISS']} MISS{' (INVALID run)' if invalid else ''}", "", head,
        "", *lines, "", f"Total time {elapsed:.0f} s."])
    with open(f"{out}/results.md", "w") as f:
        f.write(md + "\n")
    with open(f"{out}/results.json", "w") as f:
        json.dump({"machine": m, "repeats": cells, "full_read": foot,
                   "medians": [{"target": t, "workload": w, **v} for (t, w), v in med.items()],
                   "evaluation": lines}, f, indent=1)
    report.plot(med, ts, out, header(m))
    if stamp:
        link = os.path.join(root, "latest")
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(stamp, link)
    return out, md


def rewrite_report(a):
    """--report DIR: the same results, reported again."""
    with open(os.path.join(a.report, "results.json")) as f:
        r = json.load(f)
    m, cells, foot = r["machine"], r["repeats"], r["full_read"]
    names = {c["target"] for c in cells}
    ts = [t for t in tg.all_targets(m.get("plugin", "")) if t.name in names]
    a.size = m["image_bytes"]
    out, md = write_results(a, m, ts, cells, foot, m.get("elapsed_s", 0), out=a.report)
    print(md + f"\nResults rewritten in {out}")


def wait_quiet(a, m, when):
    """Waits for a quiet machine; exits when none comes (unless --noisy)."""
    ok, load, busy = quiet.settle(a.max_load, a.max_other, a.settle,
                                  lambda s: print(f"bench/run.py: {s}", flush=True))
    m.update(loadavg_start=load, idle_other_pct=busy["other_pct"],
             idle_steal_pct=busy["steal_pct"], quiet_start=ok)
    if not ok and a.noisy:
        print(f"bench/run.py: the machine is not quiet {when} (load average {load:.2f}, other "
              f"processes {busy['other_pct']:.1f}% of the CPUs): running anyway (--noisy), the "
              f"results will be marked INVALID, no cell run again", flush=True)
        a.retries = 0   # every cell would be disturbed: running it again only costs time
    if not ok and not a.noisy:
        sys.exit(f"bench/run.py: the machine is not quiet {when}: load average {load:.2f} (limit "
                 f"{a.max_load:g}), other processes {busy['other_pct']:.1f}% of the CPUs, steal "
                 f"{busy['steal_pct']:.1f}% (limit {a.max_other:g}%). Figures taken now would "
                 f"measure the other work; --noisy runs anyway and marks the results INVALID.")


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main():
    a = parse_args()
    if a.report:
        return rewrite_report(a)
    if os.geteuid() != 0:
        sys.exit("bench/run.py: must run as root (drop_caches, losetup, fincore of the image)")
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started ignoring it
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    atexit.register(tg.cleanup)
    wait_quiet(a, {}, "to start")   # before the build, so a busy machine is told at once
    plugin = plugin_path(a)
    if not os.path.exists(plugin):
        sys.exit(f"bench/run.py: no plugin at {plugin}")
    a.nbdkit = nbdkit_path(a)
    ts = tg.all_targets(plugin)
    if a.only:
        ts = [t for t in ts if t.name in a.only.split(",")]
    if a.workloads:
        fio.WORKLOADS[:] = [w for w in fio.WORKLOADS if w.name in a.workloads.split(",")]
    m = machine(a, plugin)
    work = tempfile.mkdtemp(prefix="loopdio-bench-")
    image = os.path.join(a.dir, f"loopdio-bench-{os.getpid()}.img")
    t0 = time.monotonic()
    try:
        fio.write_image(image, a.size)
        m["image_allocated_bytes"] = os.stat(image).st_blocks * 512
        m["default_engine"] = tg.default_engine(a.nbdkit, plugin, image)
        print(header(m), flush=True)
        wait_quiet(a, m, "after the build and the image were made")  # their load passes
        print(quiet_line(m), flush=True)
        cells, foot = measure(a, ts, image, work)
        out, md = write_results(a, m, ts, cells, foot, time.monotonic() - t0)
    finally:
        tg.cleanup()
        for f in (image,):
            if os.path.exists(f):
                os.unlink(f)
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + md + f"\nResults in {out} (and bench/results/latest)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\nbench/run.py: interrupted; servers stopped, loop devices detached")
