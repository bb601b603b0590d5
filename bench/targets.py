# The targets of the side-by-side benchmark: how to bring each one up around a single fio run
# (an NBD server as our child, or a loop device) and how to take it down again, collecting the
# server's CPU time and context switches from wait4() so exited threads are counted too.
# Every child and every loop device is registered, and cleanup() undoes all of them.

import ctypes
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

_children = {}      # pid -> Popen of every live child we started (servers and fio)
_loops = set()      # loop devices we attached and have not detached yet


@dataclass(frozen=True)
class Target:
    name: str
    kind: str       # nbdkit, qemu, loop or raw
    family: str     # loopdio, file, qemu, loop, null or raw: what the ratios compare
    args: tuple     # nbdkit plugin and parameters, qemu-nbd options, or losetup option


DEFAULT = "loopdio-default"     # the engine loopdio picks when told none: the one judged


def all_targets(plugin):
    img = "file={img}"
    return [
        Target(DEFAULT, "nbdkit", "loopdio", (plugin, img, "directio=1")),
        Target("loopdio-sync", "nbdkit", "loopdio", (plugin, img, "directio=1", "aio=sync")),
        Target("loopdio-libaio", "nbdkit", "loopdio", (plugin, img, "directio=1", "aio=libaio")),
        Target("loopdio-io_uring", "nbdkit", "loopdio", (plugin, img, "directio=1", "aio=io_uring")),
        Target("loopdio-sync+libaio", "nbdkit", "loopdio",
               (plugin, img, "directio=1", "aio=sync+libaio")),
        Target("loopdio-sync+io_uring", "nbdkit", "loopdio",
               (plugin, img, "directio=1", "aio=sync+io_uring")),
        Target("loopdio-directio=0", "nbdkit", "loopdio", (plugin, img, "directio=0")),
        Target("nbdkit-file", "nbdkit", "file", ("file", img)),
        Target("nbdkit-file-cache=none", "nbdkit", "file", ("file", img, "cache=none")),
        Target("qemu-nbd-native", "qemu", "qemu", ("--cache=none", "--aio=native")),
        Target("qemu-nbd-io_uring", "qemu", "qemu", ("--cache=none", "--aio=io_uring")),
        Target("loop-dio-off", "loop", "loop", ("--direct-io=off",)),
        Target("loop-dio-on", "loop", "loop", ("--direct-io=on",)),
        Target("nbdkit-null", "nbdkit", "null", ("null", "size={size}")),
        Target("raw-fio", "raw", "raw", ()),
        Target(BLOCKING, "blocking", "raw", ()),
    ]


# fio on the image with one thread per request in flight (fio.blocking): with nbdkit-null,
# the floor row, what any nbdkit plugin that blocks its worker thread must cost.
BLOCKING = "fio-blocking"


class TargetFailed(Exception):
    pass


def _die_with_parent():
    """Runs in the child: it gets SIGKILL if the benchmark itself is killed outright."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    os.setsid()     # Ctrl-C reaches only the benchmark, whose cleanup stops the child


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kw)
    _children[p.pid] = p
    return p


def exited(p):
    """True once child p has exited, without reaping it (reap() still gets its rusage)."""
    return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap(p, timeout=15.0):
    """Waits for child p (no limit if timeout is None, else SIGKILL after it) and returns
    (exit code, rusage of the whole process, all its threads included)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            _children.pop(p.pid, None)
            return p.returncode, ru
        if time.monotonic() > deadline:
            p.kill()
            deadline += timeout
        time.sleep(0.005)


def _cmdline(target, image, size, threads, sock, pidfile, nbdkit):
    if target.kind == "qemu":
        return ["qemu-nbd", "-f", "raw", *target.args, "-k", sock, "--shared=16",
                "--persistent", f"--pid-file={pidfile}", image]
    args = [a.format(img=image, size=size) for a in target.args]
    return [nbdkit, "--threads", str(threads), "-U", sock, "-P", pidfile, "-f", *args]


def peak_rss_mib(pid):
    """The process's peak resident set since it exec'd (VmHWM), or None once it has exited.
    Not wait4's ru_maxrss: that also counts the forked Python child before the exec."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Server:
    """One NBD server for one cell: start() returns fio's target options, stop() the cost."""

    def __init__(self, target, image, size, threads, workdir, nbdkit):
        self.sock = os.path.join(workdir, "nbd.sock")
        self.pidfile = os.path.join(workdir, "server.pid")
        self.log = os.path.join(workdir, "server.log")
        self.cmd = _cmdline(target, image, size, threads, self.sock, self.pidfile, nbdkit)
        self.proc = None

    def start(self):
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        with open(self.log, "w") as log:
            self.proc = spawn(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.pidfile) and os.path.getsize(self.pidfile) > 0):
            if exited(self.proc) or time.monotonic() > deadline:
                self.stop()
                raise TargetFailed(f"{self.cmd[0]} did not start: {self.log_tail()}")
            time.sleep(0.005)
        return ["--ioengine=nbd", f"--uri=nbd+unix:///?socket={self.sock}"]

    def stop(self):
        """Returns {cpu_s, csw, vcsw, rss_mib} of the whole server process (vcsw: the
        voluntary switches alone; rss: its peak while it ran), or None if it was not running."""
        if self.proc is None:
            return None
        rss = peak_rss_mib(self.proc.pid)
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # not send_signal: its poll() would reap
        _, ru = reap(self.proc)
        self.proc = None
        return {"cpu_s": ru.ru_utime + ru.ru_stime, "csw": ru.ru_nvcsw + ru.ru_nivcsw,
                "vcsw": ru.ru_nvcsw, "rss_mib": rss}

    def log_tail(self):
        with open(self.log, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-3:])


class LoopDevice:
    """A loop device over the image; fio runs on it with libaio and O_DIRECT."""

    def __init__(self, target, image):
        self.option, self.image, self.dev = target.args[0], image, None

    def start(self):
        r = subprocess.run(["losetup", "--find", "--show", self.option, self.image],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise TargetFailed(f"losetup {self.option}: {r.stderr.strip()}")
        self.dev = r.stdout.strip()
        _loops.add(self.dev)
        want = "1" if self.option.endswith("=on") else "0"
        if self.dio() != want:
            raise TargetFailed(f"losetup {self.option}: {self.dev} reports dio={self.dio()}")
        return ["--ioengine=libaio", "--direct=1", f"--filename={self.dev}"]

    def dio(self):
        name = os.path.basename(self.dev)
        with open(f"/sys/block/{name}/loop/dio") as f:
            return f.read().strip()

    def stop(self):
        if self.dev:
            detach(self.dev)
            self.dev = None
        return None


class RawFile:
    """No server at all: fio on the image file with libaio and O_DIRECT (threads: each job a
    thread of the fio process, as nbdkit's workers are threads of the server)."""

    def __init__(self, image, threads=False):
        self.image, self.threads = image, threads

    def start(self):
        return ["--ioengine=libaio", "--direct=1", f"--filename={self.image}",
                *(["--thread"] if self.threads else [])]

    def stop(self):
        return None


def bring_up(target, image, size, threads, workdir, nbdkit):
    """nbdkit: the absolute path of the nbdkit that runs loopdio and its file and null peers."""
    if target.kind in ("nbdkit", "qemu"):
        return Server(target, image, size, threads, workdir, nbdkit)
    if target.kind == "loop":
        return LoopDevice(target, image)
    return RawFile(image, threads=target.kind == "blocking")


def default_engine(nbdkit, plugin, image):
    """The engine loopdio serves with when given none, as its export description names it."""
    r = subprocess.run([nbdkit, "-U", "-", plugin, f"file={image}", "directio=1", "--run",
                        'nbdinfo --json "$uri"'], capture_output=True, text=True, timeout=60)
    try:
        desc = json.loads(r.stdout)["exports"][0]["description"]
    except (ValueError, KeyError, IndexError):
        return "unknown"
    m = re.search(r"engine ([\w+]+)", desc)
    return m[1] if m else "unknown"


def detach(dev):
    for _ in range(50):     # udev may hold the device for a moment after fio closes it
        if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    _loops.discard(dev)


def cleanup():
    """Stops every child still running and detaches every loop device still attached."""
    for p in list(_children.values()):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in list(_children.values()):
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        _children.pop(p.pid, None)
    for dev in list(_loops):
        detach(dev)
