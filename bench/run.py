#!/usr/bin/python3
# Side-by-side benchmark: fio against loopdio, nbdkit's file and null plugins, qemu-nbd, the
# kernel loop device and the raw file, all on one freshly written image. Writes a Markdown
# table, the goal checks, PNG plots and every repeat as JSON into bench/results/<timestamp>/.

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fio                      # noqa: E402
import goals                    # noqa: E402
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
        "dir": a.dir, "loadavg_start": os.getloadavg()[0],
        "fio": sh("fio", "--version"), "nbdkit": f"{sh(a.nbdkit, '--version')} ({a.nbdkit})",
        "qemu": sh("qemu-nbd", "--version").splitlines()[0], "loopdio": rev, "plugin": plugin,
        "threads": a.threads, "runtime_s": a.runtime, "repeats": a.repeats,
        "image_bytes": a.size, "mode": "quick" if a.quick else "full",
    }


def header(m):
    return (f"{m['date']} | {m['nproc']} CPUs, {m['mem_gib']} GiB, kernel {m['kernel']} | image "
            f"{m['image_bytes'] / 2**30:g} GiB on {m['fs']} ({m['dir']}) | {m['fio']}, "
            f"{m['nbdkit']}, {m['qemu']} | nbdkit --threads {m['threads']} | "
            f"{m['runtime_s']:g} s per cell, {m['repeats']} repeat(s), median | loopdio {m['loopdio']} | "
            f"load average {m['loadavg_start']:.1f} at start")


def run_cell(t, w, runtime, image, a, work):
    """One fio run against a fresh server (or loop device) after dropping caches."""
    fio.drop_caches()
    inst = tg.bring_up(t, image, a.size, a.threads, work, a.nbdkit)
    cell = {"target": t.name, "workload": w.name, "ok": False}
    try:
        cell.update(fio.run_fio(w, runtime, inst.start(), work), ok=True)
        cell["cache_bytes"] = fio.cached_bytes(image)
    except tg.TargetFailed as e:
        cell["error"] = str(e)
    except fio.FioFailed as e:
        cell["error"] = str(e) + (f" | server: {inst.log_tail()}" if isinstance(inst, tg.Server) else "")
    finally:
        cost = inst.stop()
    if cell["ok"] and cost:
        cell.update(cpu_s=cost["cpu_s"], csw=cost["csw"], rss_mib=cost["rss_mib"], cost_of="server")
    elif cell["ok"]:
        cell.update(cpu_s=cell["fio_cpu_s"], csw=cell["fio_csw"], rss_mib=None, cost_of="fio")
    return report.derive(cell, a.size) if cell["ok"] else cell


def progress(i, n, cell, t0):
    what = (f"{cell['iops']:>9,.0f} IOPS {cell['mibs']:>8,.1f} MiB/s csw/IO {cell['csw_per_io']:.2f}"
            if cell["ok"] else f"FAILED: {cell['error'][:150]}")
    print(f"[{i:3}/{n}] {time.monotonic() - t0:6.0f}s rep{cell['rep']} {cell['workload']:<24}"
          f"{cell['target']:<24}{what}", flush=True)


def footprint(t, image, a, work):
    """Reads the whole image once through the target from a cold cache, then fincore."""
    cell = run_cell(t, fio.FULL_READ, None, image, a, work)
    return {k: cell[k] for k in ("ok", "error", "mibs", "cache_bytes") if k in cell}


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
        foot[t.name] = footprint(t, image, a, work)
        print(f"full read {t.name:<24}{foot[t.name]}", flush=True)
    return cells, foot


def write_results(a, m, ts, cells, foot, elapsed):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = os.path.join(TOP, "bench", "results")
    out = os.path.join(root, stamp)
    os.makedirs(out)
    med = report.medians(cells, ts)
    head, lines, npass, ngoals = goals.goal_lines(med, foot, ts, a.size)
    m["elapsed_s"], m["loadavg_end"] = round(elapsed), os.getloadavg()[0]
    md = "\n".join([
        "# loopdio side-by-side benchmark", "", header(m), "",
        report.table(med, ts), "", "## Page cache after one full sequential read (1M, QD8, cold)",
        "", report.footprint_table(foot, ts, a.size), "",
        f"## Evaluation: {npass}/{ngoals} PASS", "", head, "", *lines, "",
        f"Total time {elapsed:.0f} s; load average {m['loadavg_end']:.1f} at the end."])
    with open(f"{out}/results.md", "w") as f:
        f.write(md + "\n")
    with open(f"{out}/results.json", "w") as f:
        json.dump({"machine": m, "repeats": cells, "full_read": foot,
                   "medians": [{"target": t, "workload": w, **v} for (t, w), v in med.items()],
                   "evaluation": lines}, f, indent=1)
    report.plot(med, ts, out, header(m))
    link = os.path.join(root, "latest")
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(stamp, link)
    return out, md


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main():
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py: must run as root (drop_caches, losetup, fincore of the image)")
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started ignoring it
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    atexit.register(tg.cleanup)
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
    print(header(m), flush=True)
    work = tempfile.mkdtemp(prefix="loopdio-bench-")
    image = os.path.join(a.dir, f"loopdio-bench-{os.getpid()}.img")
    t0 = time.monotonic()
    try:
        fio.write_image(image, a.size)
        m["image_allocated_bytes"] = os.stat(image).st_blocks * 512
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
