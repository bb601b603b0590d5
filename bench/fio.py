# The workloads and how one fio run is made and read: fio is our child, so its CPU time and
# context switches come from wait4() too, and fio reports its I/O jobs' own (the cost of the
# rows that have no server: the loop device, the raw file and the blocking floor). Also the
# page-cache footprint of the image (fincore) and dropping caches.

import json
import os
import subprocess
from dataclasses import dataclass, replace

from targets import reap, spawn


@dataclass(frozen=True)
class Workload:
    name: str
    rw: str
    bs: str             # a size, or a range "4k-64k"
    iodepth: int
    jobs: int = 1       # fio jobs: each its own NBD connection
    mix: int = 0        # randrw: the percentage of reads

    @property
    def unit(self):     # what the plots and the ratios compare
        return "MiB/s" if self.bs == "1m" else "IOPS"

    @property
    def writes(self):
        return "write" in self.rw and not self.mix


# 4k random reads and writes at depth 32 per connection over 1, 2, 4 and 8 connections; a
# VM-like mix (70% reads, 30% writes, 4k to 64k, depth 16 on each of 4 connections); and 1M
# random reads at depth 16 on each of 4 connections, where the servers' memory differs most.
WORKLOADS = [
    Workload("randread-4k-qd1", "randread", "4k", 1),
    Workload("randread-4k-qd32", "randread", "4k", 32),
    Workload("randread-4k-qd32-2conn", "randread", "4k", 32, 2),
    Workload("randread-4k-qd32-4conn", "randread", "4k", 32, 4),
    Workload("randread-4k-qd32-8conn", "randread", "4k", 32, 8),
    Workload("randwrite-4k-qd32", "randwrite", "4k", 32),
    Workload("randwrite-4k-qd32-2conn", "randwrite", "4k", 32, 2),
    Workload("randwrite-4k-qd32-4conn", "randwrite", "4k", 32, 4),
    Workload("randwrite-4k-qd32-8conn", "randwrite", "4k", 32, 8),
    Workload("vm-mix-70r-4k-64k-qd16-4conn", "randrw", "4k-64k", 16, 4, mix=70),
    Workload("randread-1m-qd16-4conn", "randread", "1m", 16, 4),
    Workload("read-1m-qd8", "read", "1m", 8),
    Workload("write-1m-qd8", "write", "1m", 8),
]
FULL_READ = Workload("full-read-1m-qd8", "read", "1m", 8)


class FioFailed(Exception):
    pass


def blocking(w, threads):
    """The workload as a blocking server's threads see it: one thread (an fio job with one
    I/O in flight) per request the server holds at once, min(depth, threads) per
    connection. fio on the image then does what each worker of a blocking nbdkit plugin
    must: one system call and one wait per I/O."""
    return replace(w, iodepth=1, jobs=min(w.iodepth, threads) * w.jobs)


def fio_args(w, runtime, image_size):
    """Random workloads run for `runtime`; sequential ones make at most one pass over the
    image within it, so a caching server never re-reads its own cache (cold cache). Several
    sequential jobs each take their own slice of the image."""
    size = f"--bsrange={w.bs}" if "-" in w.bs else f"--bs={w.bs}"
    a = [f"--name={w.name}", "--output-format=json", f"--rw={w.rw}", size,
         f"--iodepth={w.iodepth}", f"--numjobs={w.jobs}", "--group_reporting"]
    if w.jobs > 1 and not w.rw.startswith("rand"):
        part = image_size // w.jobs // 2**20 * 2**20
        a += [f"--size={part}", f"--offset_increment={part}"]
    if w.mix:
        a.append(f"--rwmixread={w.mix}")
    if runtime is not None:
        a.append(f"--runtime={round(runtime * 1000)}ms")
        if w.rw.startswith("rand"):
            a += ["--time_based", "--norandommap"]
    if "write" in w.rw or w.mix:
        a.append("--end_fsync=1")   # the flush is inside fio's runtime, so inside MiB/s
    return a


def run_fio(w, runtime, target_args, cwd, image_size):
    """Runs fio and returns its figures plus the fio process's own CPU and switches."""
    out_path, err_path = os.path.join(cwd, "fio.out"), os.path.join(cwd, "fio.err")
    args = ["fio", *fio_args(w, runtime, image_size), *target_args]
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = spawn(args, cwd=cwd, stdout=out, stderr=err)
    code, ru = reap(p, timeout=None)
    out, err = (open(f, errors="replace").read() for f in (out_path, err_path))
    if code != 0 or "{" not in out:
        raise FioFailed(f"fio exit {code}: {(err or out).strip()[-300:]}")
    job = json.loads(out[out.index("{"):])["jobs"][0]   # fio prints 'connected' first
    if job["error"]:
        raise FioFailed(f"fio job error {job['error']}: {err.strip()[-300:]}")
    r = parse_mix(job) if w.mix else parse_job(job, "write" if w.writes else "read")
    r["fio_cpu_s"] = ru.ru_utime + ru.ru_stime
    r["fio_csw"] = ru.ru_nvcsw + ru.ru_nivcsw
    # fio's own accounting of its I/O jobs, each from its start to its end: without fio's
    # start-up (a quarter of a CPU second, more with many jobs) and its reporting thread,
    # which would otherwise weigh on every row that has no server, short cells most.
    r["jobs_cpu_s"] = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] / 1000
    r["jobs_csw"] = job["ctx"]
    return r


def parse_job(job, ddir):
    d = job[ddir]
    if d["total_ios"] == 0:
        raise FioFailed(f"fio did no {ddir}s")
    pct = d["clat_ns"].get("percentile", {})
    return {
        "iops": d["iops"],
        "mibs": d["bw_bytes"] / 2**20,
        "p99_us": pct.get("99.000000", 0) / 1000,
        "mean_us": d["lat_ns"]["mean"] / 1000,
        "ios": d["total_ios"],
        "bytes": d["io_bytes"],
        "runtime_ms": d["runtime"],
    }


def parse_mix(job):
    """Reads and writes together: summed, the latencies weighted by the I/Os of each."""
    r, w = parse_job(job, "read"), parse_job(job, "write")
    n = r["ios"] + w["ios"]
    out = {k: r[k] + w[k] for k in ("iops", "mibs", "ios", "bytes")}
    out["mean_us"] = (r["mean_us"] * r["ios"] + w["mean_us"] * w["ios"]) / n
    out["p99_us"] = max(r["p99_us"], w["p99_us"])
    out["runtime_ms"] = max(r["runtime_ms"], w["runtime_ms"])
    return out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cached_bytes(path):
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", path],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def write_image(path, size):
    """A freshly written, fully allocated image (fio's buffers are not zeroes)."""
    subprocess.run(["fio", "--name=fill", f"--filename={path}", f"--size={size}",
                    "--rw=write", "--bs=1m", "--iodepth=8", "--ioengine=libaio", "--direct=1",
                    "--end_fsync=1", "--output-format=terse"],
                   check=True, stdout=subprocess.DEVNULL)
