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


def check_listings(sock, want, threads, per_thread, per_connection=100):
    """`threads` threads list the exports `per_thread` times each, all at once, on
    connections in option mode doing `per_connection` listings each. Returns the number of
    listings that were not exactly `want` (sorted names) and the first such."""
    bad, first = [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(k):
        barrier.wait()
        done = 0
        while done < per_thread:
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.connect_unix(sock)
            for _ in range(min(per_connection, per_thread - done)):
                got = listing(h)
                done += 1
                if got != want:
                    with lock:
                        bad[0] += 1
                        if not first:
                            first.append(got)
            h.opt_abort()

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
