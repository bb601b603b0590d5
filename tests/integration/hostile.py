"""Clients that try to take more than their share of a server (connections that stall in
the handshake, floods of connections, connections that ask for as much memory or as many
exports as they can), and readings of what the server then holds (/proc, fs.aio-nr). The
helpers return numbers; the test scripts decide what is acceptable.
"""
import errno
import multiprocessing
import os
import random
import selectors
import socket
import threading
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


class Storm:
    """`connections` connections that each keep `depth` requests in flight, reads and
    writes in turn, all of them of the whole of one shared nbd.Buffer at `offsets` (the
    client's memory stays at that one buffer however many requests are in flight), until
    stop() or until the server hangs up. Counts what the server answered."""

    def __init__(self, uri, connections, depth, buf, offsets):
        self.uri, self.n, self.depth, self.buf, self.offsets = uri, connections, depth, buf, offsets
        self._stop = threading.Event()
        self._go = threading.Event()
        self._lock = threading.Lock()  # protects the counters below
        self.connected = self.refused = self.disconnects = self.done = 0
        self.errors = {}  # errno name: requests that failed with it
        self._threads = []
        self._handles = []

    def _add(self, field, n=1):
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def _error(self, e):
        name = errno.errorcode.get(e.errnum, str(e.errnum)) if e.errnum else "none"
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1

    def _connection(self, k, h):
        self._go.wait()
        i = in_flight = 0
        try:
            while not self._stop.is_set():
                while in_flight < self.depth:
                    off = self.offsets[(k * self.depth + i) % len(self.offsets)]
                    (h.aio_pwrite if i % 2 else h.aio_pread)(self.buf, off)
                    i += 1
                    in_flight += 1
                h.poll(200)
                while in_flight:
                    cookie = h.aio_peek_command_completed()
                    if cookie <= 0:
                        break
                    in_flight -= 1
                    try:
                        h.aio_command_completed(cookie)
                        self._add("done")
                    except nbd.Error as e:
                        self._error(e)
                if h.aio_is_dead():
                    raise nbd.Error("the server hung up", 0)
        except nbd.Error:
            self._add("disconnects")

    def start(self):
        """Connects one connection after the other (so that none is refused for having
        arrived with too many others), then starts them all at once."""
        handles = []
        for _ in range(self.n):
            h = nbd.NBD()
            h.set_strict_mode(0)  # sizes beyond the advertised maximum go out as given
            try:
                h.connect_uri(self.uri)
                handles.append(h)
            except nbd.Error:
                self.refused += 1
        self.connected = len(handles)
        self._handles = handles  # closed by stop(), once no thread uses them
        self._threads = [threading.Thread(target=self._connection, args=(k, h), daemon=True)
                         for k, h in enumerate(handles)]
        for t in self._threads:
            t.start()
        self._go.set()  # all at once, once every thread runs

    def running(self):
        return sum(t.is_alive() for t in self._threads)

    def stop(self):
        """Stops: the clients go away without waiting for the answers still due. Their
        sockets are shut down first: a thread may be inside libnbd, pushing out a write for
        as long as the server keeps reading it."""
        self._stop.set()
        for h in self._handles:
            try:
                s = socket.socket(fileno=os.dup(h.aio_get_fd()))
            except nbd.Error:  # the server hung up on it
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join()
        self._threads.clear()  # each held a reference to its handle
        self._handles.clear()

    def summary(self):
        return (f"{self.connected} connected ({self.refused} refused), {self.done} requests "
                f"served, failed: {self.errors or 'none'}, {self.disconnects} disconnected by "
                f"the server")


class Verifier:
    """A well-behaved client in a process of its own (so that no thread of the test can
    hold it up): one request at a time, 4 KiB to 64 KiB reads and writes at unaligned
    offsets within the first `size` bytes (zeroes at the start), each checked against a
    shadow. Its first failure ends it and is kept in `failure`."""

    def __init__(self, uri, size, seed):
        ctx = multiprocessing.get_context("fork")
        self._requests = ctx.Value("q", 0)
        self._slowest = ctx.Value("d", 0.0)  # seconds, the longest request
        self._slowest_at = ctx.Value("d", 0.0)  # when it started (time.monotonic())
        self._failure = ctx.Array("c", 2000)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=self._run, args=(uri, size, seed), daemon=True)

    @property
    def requests(self):
        return self._requests.value

    @property
    def slowest(self):
        return self._slowest.value

    @property
    def slowest_at(self):
        return self._slowest_at.value

    @property
    def failure(self):
        return self._failure.value.decode() or None

    def _run(self, uri, size, seed):
        try:
            h = nbd.NBD()
            h.set_strict_mode(0)
            h.connect_uri(uri)
            rng, shadow = random.Random(seed), bytearray(size)
            while not self._stop.is_set():
                n = rng.randint(4096, 65536)
                off = rng.randrange(size - n)
                t0 = time.monotonic()
                if rng.random() < 0.5:
                    data = rng.randbytes(n)
                    h.pwrite(data, off)
                    shadow[off:off + n] = data
                elif h.pread(n, off) != shadow[off:off + n]:
                    raise AssertionError(f"the read of {n} bytes at {off} differs from what "
                                         f"was written")
                if time.monotonic() - t0 > self._slowest.value:
                    self._slowest.value, self._slowest_at.value = time.monotonic() - t0, t0
                self._requests.value += 1
            h.flush()
            h.shutdown()
        except Exception as e:  # reported through `failure`
            self._failure.value = repr(e).encode()[:1999]

    def start(self):
        self._process.start()

    def wait_requests(self, n, timeout):
        """True once `n` more requests than now have been served."""
        want, deadline = self.requests + n, time.monotonic() + timeout
        while self.requests < want and self.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.requests >= want

    def stop(self):
        self._stop.set()
        self._process.join()


class Sampler:
    """Samples a process's VmHWM, VmRSS and RssAnon (KiB) every `interval` seconds and keeps
    the peaks, until stopped."""

    KEYS = ("VmHWM", "VmRSS", "RssAnon")

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.peak = dict.fromkeys(self.KEYS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self):
        got = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in self.KEYS:
                    got[key] = int(value.split()[0])
        return got

    def _run(self):
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        for k, v in self.read().items():
            self.peak[k] = max(self.peak[k], v)
