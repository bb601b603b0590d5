# Whether the machine is quiet enough to measure on: the load average before the run, and
# during every cell the CPU that processes other than ours used (the whole machine's busy
# time from /proc/stat, less the benchmark's own processes and the kernel's threads, which
# do our I/O's work) and the CPU the hypervisor stole. Figures are % of all the CPUs.

import os
import resource
import time

PF_KTHREAD = 0x00200000     # include/linux/sched.h: the task is a kernel thread
TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count()


def _machine():
    """(busy, steal) seconds of all CPUs: user + nice + system, and steal (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / TICK, (v[7] if len(v) > 7 else 0) / TICK


def _kthreads():
    """{pid: CPU seconds} of every kernel thread."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue    # gone meanwhile
        if int(fields[6]) & PF_KTHREAD:     # field 9 of proc(5): flags
            out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def _ours():
    """CPU seconds of the benchmark and of every child it has reaped (servers, fio, tools)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Watch:
    """Started before a cell, stopped after it (every child of the cell reaped)."""

    def __init__(self):
        self.k0 = _kthreads()
        self.t0, self.o0 = time.monotonic(), _ours()
        self.m0 = _machine()

    def stop(self):
        """{"other_pct", "steal_pct"}: % of the machine's CPUs over the cell's wall time."""
        m1 = _machine()
        wall, ours = time.monotonic() - self.t0, _ours() - self.o0
        k1 = _kthreads()
        kernel = sum(v - self.k0.get(pid, 0.0) for pid, v in k1.items())
        other = max(0.0, m1[0] - self.m0[0] - ours - kernel)
        cap = NCPU * max(wall, 1e-3)
        return {"other_pct": 100 * other / cap, "steal_pct": 100 * (m1[1] - self.m0[1]) / cap}


def busy_pct(seconds):
    """Others' CPU and steal over a few idle seconds of ours: what the machine does alone."""
    w = Watch()
    time.sleep(seconds)
    return w.stop()


def settle(max_load, max_other, wait_s, say):
    """Waits (at most wait_s) until the 1-minute load average is at most max_load and other
    processes use at most max_other % of the CPUs over 5 s. Returns (quiet, load, busy)."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        load, busy = os.getloadavg()[0], busy_pct(5)
        noise = busy["other_pct"] + busy["steal_pct"]
        if load <= max_load and noise <= max_other:
            return True, load, busy
        if time.monotonic() > deadline:
            return False, load, busy
        if not told:
            say(f"waiting up to {wait_s:.0f} s for a quiet machine: load average {load:.2f} "
                f"(limit {max_load}), others' CPU {busy['other_pct']:.1f}% + steal "
                f"{busy['steal_pct']:.1f}% (limit {max_other}%)")
            told = True
