"""Helpers for tests of a directory of exports (dir=): clients of one export by name, the
control socket's view of the exports, listings in option mode, and the syscalls a server
makes meanwhile (strace attached to the running nbdkit).
"""
import json
import os
import signal
import subprocess
import threading
import time

import nbd

import control_client
import nbdtest


def uri(sock, name):
    return f"nbd+unix:///{name}?socket={sock}"


def connect(sock, name, strict=True):
    """A connection to export `name`; strict=False lets unaligned requests through as sent."""
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.set_export_name(name)
    h.connect_unix(sock)
    return h


def control(ctl, command, timeout=60.0):
    """One command on the control socket; its reply, parsed. Fails on no reply or ok=false."""
    lines = control_client.ask(ctl, command, timeout=timeout)
    if not lines:
        raise AssertionError(f"control {command!r}: no reply within {timeout} s")
    reply = json.loads(lines[0])
    if not reply.get("ok"):
        raise AssertionError(f"control {command!r}: {reply}")
    return reply


def exports(ctl):
    """The `exports` of the control socket's status."""
    return control(ctl, "status")["exports"]


def open_exports(ctl, name=None):
    """The open exports in status (stale ones included), of `name` only when given."""
    return [e for e in exports(ctl) if e.get("open") and (name is None or e.get("name") == name)]


def wait_for(what, predicate, timeout=60.0):
    """Polls predicate() until it is true; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)


def wait_closed(ctl, name, timeout=60.0):
    """Until no export of `name` is open: nbdkit closes a connection after its client left."""
    wait_for(f"{name} to close", lambda: not open_exports(ctl, name), timeout)


def wait_idle(ctl, timeout=60.0):
    """Until the server has closed every connection."""
    wait_for("every connection to close",
             lambda: control(ctl, "status")["connections"] == 0, timeout)


def listing(h):
    """One NBD_OPT_LIST on a handle in option mode: the names, in the order sent."""
    names = []
    h.opt_list(lambda name, description: names.append(name) or 0)
    return names


def check_listings(sock, want, threads, per_thread):
    """`threads` threads list the exports `per_thread` times each, all at once, each listing
    on a connection of its own in option mode (nbdkit answers one listing per connection).
    Returns the number of listings that were not exactly `want` (sorted names) and the
    first such."""
    bad, first = [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(k):
        barrier.wait()
        for _ in range(per_thread):
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.connect_unix(sock)
            got = listing(h)
            h.opt_abort()
            if got != want:
                with lock:
                    bad[0] += 1
                    if not first:
                        first.append(got)

    nbdtest.run_threads(worker, threads)
    return bad[0], (first[0] if first else None)


class Strace:
    """strace -f attached to a running process, tracing `syscalls`, for a `with` block: on
    entry it waits until strace has attached to every thread (new threads are followed); on
    exit it detaches and `lines` holds what was traced."""

    def __init__(self, pid, syscalls, out):
        self.pid, self.syscalls, self.out = pid, syscalls, out
        self.lines = []

    def __enter__(self):
        self.err = self.out + ".err"
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                ["strace", "-f", "-e", f"trace={self.syscalls}",
                 "-o", self.out, "-p", str(self.pid)], stderr=err)
        wait_for("strace to attach",
                 lambda: "attached" in open(self.err).read() or self.proc.poll() is not None)
        if self.proc.poll() is not None:
            raise AssertionError(f"strace exited: {open(self.err).read()}")
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)  # detaches, leaving the server running
        self.proc.wait(timeout=60)
        self.lines = open(self.out).read().splitlines()
        return False


def fds_of(pid, path):
    """The fds of process `pid` open on `path` (as /proc shows it, " (deleted)" included)."""
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                fds.append(int(fd))
        except FileNotFoundError:
            pass
    return sorted(fds)


class HeldOpenat:
    """strace attached to the threads process `pid` has now, and not to those it starts
    later (a new connection's), holding each of them `seconds` at the entry of its first
    openat: the time for another thread to act between a check and the open that follows.
    `wait(name)` returns once one of them is held at an openat of `name` (read from the
    process's memory). For a `with` block; it detaches on exit."""

    OPENAT = 257  # x86_64

    def __init__(self, pid, seconds, out):
        self.pid, self.seconds, self.out = pid, seconds, out

    def __enter__(self):
        self.tids = sorted(os.listdir(f"/proc/{self.pid}/task"))
        self.err = self.out + ".err"
        attach = [a for t in self.tids for a in ("-p", t)]
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                ["strace", "-e", "trace=openat",
                 "-e", f"inject=openat:delay_enter={int(self.seconds * 1e6)}:when=1",
                 "-o", self.out] + attach, stderr=err)

        def attached():
            said = open(self.err).read()
            return self.proc.poll() is not None or all(
                f"Process {t} attached" in said or f"ptrace(PTRACE_SEIZE, {t})" in said
                for t in self.tids)
        wait_for("strace to attach to every thread", attached)
        if self.proc.poll() is not None:
            raise AssertionError(f"strace exited: {open(self.err).read()}")
        return self

    def held_at(self, tid):
        """The path of the openat thread `tid` is held at, or None."""
        try:
            with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                call = f.read().split()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if state != "t" or not call or call[0] != str(self.OPENAT):
            return None
        with open(f"/proc/{self.pid}/mem", "rb") as mem:
            mem.seek(int(call[2], 16))
            return mem.read(4096).split(b"\0", 1)[0].decode(errors="replace")

    def wait(self, name, timeout=60.0):
        """Until a traced thread is held at an openat of `name` (or of a path ending
        in /name)."""
        def held():
            return any(p is not None and (p == name or p.endswith("/" + name))
                       for p in map(self.held_at, self.tids))
        wait_for(f"an openat of {name} to be held", held, timeout)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)  # detaches; a held thread goes on
        self.proc.wait(timeout=60)
        return False
