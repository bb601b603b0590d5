"""Clients that try to take more than their share of a server (connections that stall in
the handshake, floods of connections, connections that ask for as much memory or as many
exports as they can), and readings of what the server then holds (/proc, fs.aio-nr). The
helpers return numbers; the test scripts decide what is acceptable.
"""
import errno
import os
import random
import selectors
import socket
import time

import nbd

# The start of an option: the client's flags (fixed newstyle, no zeroes), then an option
# header cut after its magic. The server waits for the rest.
HALF_OPTION = (3).to_bytes(4, "big") + b"IHAVEOPT"


def proc_numbers(pid):
    """A process's threads, open fds, CPU seconds (user + system) and VmHWM/VmRSS (KiB)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return {
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu": cpu,
        "hwm": int(status["VmHWM"][0]),
        "rss": int(status["VmRSS"][0]),
    }


def connect_or_reason(sock, name):
    """A handle to export `name` on the Unix socket `sock`, or the reason the server gave for
    refusing it (a str): the message it sends with its error reply, which libnbd before 1.16
    shows only in its debug output. Raises when the connection fails without a reason."""
    said = []

    def debug(context, msg):
        if "server error message: " in msg:
            said.append(msg.split("server error message: ", 1)[1])

    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_debug_callback(debug)
    h.set_debug(True)
    h.set_export_name(name)
    try:
        h.connect_unix(sock)
    except nbd.Error as e:
        if not said:
            raise AssertionError(f"export {name!r}: refused with no reason from the server: {e}")
        return said[-1]
    h.set_debug(False)
    return h


def write_and_verify(h, seed, size):
    """Three unaligned writes of random bytes within `size`, each read back and compared."""
    rng = random.Random(seed)
    for _ in range(3):
        n = rng.randint(1, 70000)
        off = rng.randrange(size - n)
        data = rng.randbytes(n)
        h.pwrite(data, off)
        if h.pread(n, off) != data:
            raise AssertionError(f"{n} bytes at {off} read back differ from what was written")


def _unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def stall(path, n, deadline):
    """Opens n connections to the server on the Unix socket `path` as fast as it can; the
    even ones send nothing, the odd ones half an option, and then none sends more. Watches
    every one until the server closes it or `deadline` seconds have passed. Returns one
    record per connection: when it was made, when the server's greeting came (None: never),
    when the server closed it (None: not by the deadline), all from time.monotonic()."""
    sel = selectors.DefaultSelector()
    conns = []
    t0 = time.monotonic()
    for k in range(n):
        s = _unix(path)
        if k % 2:
            s.sendall(HALF_OPTION)
        s.setblocking(False)
        c = {"connected": time.monotonic(), "greeting": None, "closed": None, "sock": s}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    open_left = n
    while open_left and time.monotonic() < t0 + deadline:
        ready = sel.select(timeout=0.5)
        now = time.monotonic()
        # Every event of one wake gets the same time, and most_at_once counts the closes of
        # one time before its greetings: a slot given up and taken again between two wakes
        # is not counted twice.
        for key, _ in ready:
            c = key.data
            while True:
                try:
                    data = c["sock"].recv(4096)
                except BlockingIOError:
                    break
                except ConnectionResetError:  # closed with our half option unread
                    data = b""
                if not data:
                    c["closed"] = now
                    sel.unregister(c["sock"])
                    c["sock"].close()
                    open_left -= 1
                    break
                if c["greeting"] is None:
                    c["greeting"] = now
    for c in conns:
        if c["closed"] is None:
            sel.unregister(c["sock"])
            c["sock"].close()
        del c["sock"]
    return conns


def most_at_once(conns):
    """The most connections that held the server's greeting (a handshake slot) at once: the
    server greets a connection only once it has its slot, and closes it before giving the
    slot back, so the client's view never overlaps more than the server's."""
    events = []
    for c in conns:
        if c["greeting"] is not None:
            events.append((c["greeting"], 1))
            events.append((c["closed"] if c["closed"] is not None else float("inf"), -1))
    events.sort()  # at one time, -1 (a close) before +1 (a greeting)
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def flood(path, connects, hold, duration):
    """Connects `connects` times as fast as it can, keeping the last `hold` connections open
    (silent), and holds them until `duration` seconds after the start. Returns the seconds
    the connects took and how many connects failed (and with which errors)."""
    held = []
    failed = {}
    t0 = time.monotonic()
    for _ in range(connects):
        try:
            held.append(_unix(path))
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            failed[name] = failed.get(name, 0) + 1
        if len(held) > hold:
            held.pop(0).close()
    took = time.monotonic() - t0
    left = t0 + duration - time.monotonic()
    if left > 0:
        time.sleep(left)
    for s in held:
        s.close()
    return took, failed


def open_export(sock, name):
    """A connection to export `name` that knows the export's description."""
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_full_info(True)
    h.set_export_name(name)
    h.connect_unix(sock)
    return h


def aio_nr():
    with open("/proc/sys/fs/aio-nr") as f:
        return int(f.read())


def aio_contexts(pid):
    """The sizes in bytes of a process's AIO rings (one mapping per context)."""
    sizes = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "/[aio]" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                sizes.append(hi - lo)
    return sizes


def other_aio_holders(pid):
    """Processes other than `pid` that hold AIO contexts now."""
    others = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == int(pid):
            continue
        try:
            with open(f"/proc/{p}/maps") as f:
                if "/[aio]" in f.read():
                    others.append(int(p))
        except OSError:
            pass
    return others


def expect_aio_rise(pid, base, want, what):
    """fs.aio-nr is `want` above `base`. It counts every process's contexts: outside CI
    (where tests run one at a time) a difference is excused, and printed, when other
    processes hold contexts, as lib.sh's expect_aio_nr does."""
    rise = aio_nr() - base
    if rise == want:
        return
    others = other_aio_holders(pid)
    if os.environ.get("CI") != "true" and others:
        print(f"  {what}: fs.aio-nr rose by {rise}, not {want}; processes {others} hold AIO "
              f"contexts: not compared")
        return
    raise AssertionError(f"{what}: fs.aio-nr rose by {rise}, not {want}")
