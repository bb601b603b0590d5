"""Two clients of one server, one of them as bad a neighbour as a client can be
(test-noisy-neighbour.sh).

  neighbours.py run OPTIONS...   the whole scenario; prints the numbers, exits 1 on failure
  neighbours.py load SOCK NAME   the noisy client (run by `run`, with the weight of nice 19)
  neighbours.py probe SOCK NAME OUT   the quiet client (run by `run`)

The noisy client keeps CONNS connections to its export, each with DEPTH reads and writes in
flight, of 1 to 32 MiB, one in eight of 32 to 64 MiB (beyond the advertised maximum: the
server closes such a connection, and the client opens another), half of them unaligned. Every
request reads into or writes from one shared 64 MiB buffer, so its own memory stays bounded.
It prints its counters as a JSON line every 0.25 s; SIGUSR1 marks the time from which each
connection must show a completed request again; SIGTERM stops it (in-flight requests are
waited for, then a final line).

The quiet client reads and writes 4 KiB at a time, at depth 1, on one connection, keeping a
shadow of its region and checking every read against it; it records the start and length of
every request (CLOCK_MONOTONIC, shared by every process) and stops at EOF on its stdin, after
reading its whole region back once more.
"""
import argparse
import array
import errno
import json
import mmap
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import nbd

MIB = 1 << 20
CONNS = 8
DEPTH = 16
MAX_REQ = 64 * MIB        # nbdkit accepts up to this much
ADVERTISED = 32 * MIB     # the plugin's advertised maximum: beyond it, disconnection
OVERSIZED_ONE_IN = 8
BLOCK = 4096
P99_LIMIT = 0.020         # the quiet export's p99, seconds (measured 0.5-2.2 ms; 0.13-0.16 alone)
TAIL = MIB                # the end of the quiet export: never written, read by newcomers


def connect(sock, name, strict=True):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)  # send what is asked, unaligned and oversized alike
        h.set_pread_initialize(False)  # the noisy client does not read what it reads
    h.set_export_name(name)
    h.connect_unix(sock)
    return h


def error_name(e):
    """ENOMEM, say: libnbd 1.14's nbd.Error.errno is the name, later ones the number."""
    if isinstance(e.errno, str):
        return e.errno
    return errno.errorcode.get(e.errno, str(e.errno))


# ----------------------------------------------------------------------------------------
# The noisy client

class NoisyConn:
    def __init__(self):
        self.h = None
        self.inflight = {}          # cookie -> bytes
        self.ok_since_mark = 0
        self.retry_at = 0.0


class Load:
    def __init__(self, sock, name, seed):
        self.sock, self.name = sock, name
        self.rng = random.Random(seed)
        self.mem = bytearray(os.urandom(MIB) * (MAX_REQ // MIB))
        self.view = memoryview(self.mem)
        self.conns = [NoisyConn() for _ in range(CONNS)]
        self.size = 0
        self.c = {"submitted": 0, "ok": 0, "ok_bytes": 0, "enomem": 0, "errors": {},
                  "lost": 0, "oversized": 0, "disconnects": 0, "connects": 0, "refused": 0,
                  "inflight": 0, "max_inflight": 0, "full_depth": False, "marked": False,
                  "conns_ok_since_mark": 0, "last_ok": 0.0}
        self.stop = False
        self.mark = False

    def pick(self):
        """A request: (write?, offset, length); aligned to 4 KiB or not at all."""
        r = self.rng
        if r.randrange(OVERSIZED_ONE_IN) == 0:
            n = r.randint(ADVERTISED + BLOCK, MAX_REQ)
        else:
            n = r.randint(MIB, ADVERTISED)
        if r.random() < 0.5:
            n -= n % BLOCK
            off = r.randrange((self.size - n) // BLOCK + 1) * BLOCK
        else:
            off = r.randrange(self.size - n + 1)
        return r.random() < 0.5, off, n

    def open(self, conn):
        try:
            conn.h = connect(self.sock, self.name, strict=False)
            self.size = conn.h.get_size()
            self.c["connects"] += 1
        except nbd.Error:
            conn.h = None  # refused (slots, memory): tried again a little later
            conn.retry_at = time.monotonic() + 0.05
            self.c["refused"] += 1

    def lose(self, conn):
        """The connection died (the server closed it): its requests are lost."""
        self.c["disconnects"] += 1
        self.c["lost"] += len(conn.inflight)
        conn.inflight.clear()
        try:
            conn.h.close()
        except (nbd.Error, AttributeError):
            pass
        conn.h = None

    def fill(self, conn):
        while not self.stop and len(conn.inflight) < DEPTH:
            write, off, n = self.pick()
            buf = nbd.Buffer.from_buffer(self.view[:n])
            try:
                cookie = (conn.h.aio_pwrite if write else conn.h.aio_pread)(buf, off)
            except nbd.Error:
                self.lose(conn)
                return
            conn.inflight[cookie] = n
            self.c["submitted"] += 1
            if n > ADVERTISED:
                self.c["oversized"] += 1

    def reap(self, conn):
        while conn.inflight:
            try:
                cookie = conn.h.aio_peek_command_completed()
            except nbd.Error:
                break
            if not cookie:
                break
            n = conn.inflight.pop(cookie)
            try:
                conn.h.aio_command_completed(cookie)
                self.c["ok"] += 1
                self.c["ok_bytes"] += n
                self.c["last_ok"] = time.monotonic()
                conn.ok_since_mark += 1
            except nbd.Error as e:
                k = error_name(e)
                if k == "ENOMEM":
                    self.c["enomem"] += 1
                elif k == "ENOTCONN":
                    self.c["lost"] += 1  # in flight when the server closed the connection
                else:
                    self.c["errors"][k] = self.c["errors"].get(k, 0) + 1

    def step(self):
        live = [c for c in self.conns if c.h]
        if not live:
            time.sleep(0.05)
            return
        p = select.poll()
        byfd = {}
        for c in live:
            d = c.h.aio_get_direction()
            ev = (select.POLLIN if d & nbd.AIO_DIRECTION_READ else 0) | \
                 (select.POLLOUT if d & nbd.AIO_DIRECTION_WRITE else 0)
            fd = c.h.aio_get_fd()
            byfd[fd] = c
            p.register(fd, ev)
        for fd, ev in p.poll(100):
            c = byfd[fd]
            try:
                if ev & select.POLLOUT and c.h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE:
                    c.h.aio_notify_write()
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    c.h.aio_notify_read()
            except nbd.Error:
                pass
        for c in live:
            self.reap(c)
            if c.h.aio_is_dead() or c.h.aio_is_closed():
                self.lose(c)

    def report(self, final=False):
        self.c["inflight"] = sum(len(c.inflight) for c in self.conns)
        self.c["max_inflight"] = max(self.c["max_inflight"], self.c["inflight"])
        if all(len(c.inflight) == DEPTH for c in self.conns):
            self.c["full_depth"] = True
        self.c["conns_ok_since_mark"] = sum(1 for c in self.conns if c.ok_since_mark)
        self.c["marked"] = self.mark
        print(json.dumps(dict(self.c, final=final, t=time.monotonic())), flush=True)

    def run(self):
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGUSR1, lambda *_: self.on_mark())
        last = 0.0
        while not self.stop:
            for c in self.conns:
                if not c.h and time.monotonic() >= c.retry_at:
                    self.open(c)
                if c.h:
                    self.fill(c)
            self.step()
            if time.monotonic() - last >= 0.25:
                self.report()
                last = time.monotonic()
        deadline = time.monotonic() + 30
        while any(c.h and c.inflight for c in self.conns) and time.monotonic() < deadline:
            self.step()
        for c in self.conns:
            if c.h:
                try:
                    c.h.shutdown()
                except nbd.Error:
                    pass
        self.report(final=True)

    def on_mark(self):
        self.mark = True
        for c in self.conns:
            c.ok_since_mark = 0


# ----------------------------------------------------------------------------------------
# The quiet client

def probe(sock, name, out):
    """The quiet client. Appends (start, seconds, 1 for a write) of every request to `out`
    (flushed every 256 requests and on the way out); `out`.now holds the start of the
    request in progress (0 when none), for whoever must stop a client stuck in one."""
    h = connect(sock, name)
    size = h.get_size()
    region = size - TAIL
    shadow = bytearray()
    for off in range(0, region, MIB):
        shadow += h.pread(min(MIB, region - off), off)
    rng = random.Random(1)
    blocks = region // BLOCK
    log = open(out, "wb")
    with open(out + ".now", "wb") as f:
        f.write(bytes(8))
    now_fd = os.open(out + ".now", os.O_RDWR)
    now = mmap.mmap(now_fd, 8)
    samples = array.array("d")
    stdin = select.poll()
    stdin.register(sys.stdin, select.POLLIN)
    print("ready", flush=True)
    n, failed = 0, None
    while not failed:
        if n % 64 == 0 and stdin.poll(0):
            break  # EOF (or anything) on stdin: stop
        off = rng.randrange(blocks) * BLOCK
        write = rng.random() < 0.5
        data = rng.randbytes(BLOCK) if write else None
        t0 = time.monotonic()
        now[:] = struct.pack("d", t0)
        try:
            if write:
                h.pwrite(data, off)
            else:
                got = h.pread(BLOCK, off)
                if got != shadow[off:off + BLOCK]:
                    failed = "differs from what was written there"
        except nbd.Error as e:
            failed = f"failed: {e}"
        samples.extend((t0, time.monotonic() - t0, 1.0 if write else 0.0))
        now[:] = bytes(8)
        if write and not failed:
            shadow[off:off + BLOCK] = data
        if failed:
            what = "write" if write else "read"
            failed = f"the {what} of 4096 bytes at {off} at {t0:.3f} {failed}"
        n += 1
        if n % 256 == 0:
            samples.tofile(log)
            del samples[:]
    samples.tofile(log)
    log.close()
    if failed:
        sys.exit(f"quiet client: {failed}")
    for off in range(0, region, MIB):
        k = min(MIB, region - off)
        if h.pread(k, off) != shadow[off:off + k]:
            sys.exit(f"quiet client: re-reading its region: {k} bytes at {off} differ")
    h.shutdown()
    print(f"done {n}", flush=True)


# ----------------------------------------------------------------------------------------
# The scenario

def pct(sorted_v, p):
    if not sorted_v:
        return float("nan")
    return sorted_v[min(len(sorted_v) - 1, int(p / 100 * len(sorted_v)))]


def ask_control(path, command, timeout):
    """One command on the control socket, on a connection of its own; its reply line, or
    None if there was none (the server closed the connection). Every step is bounded."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        return buf.split(b"\n", 1)[0].decode()


def wait_for(h, done, deadline, what):
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: no answer in time")
        h.poll(max(1, int(left * 1000)))


class Watcher(threading.Thread):
    """Runs `probe` every `every` seconds until halted, timing each run: samples of
    (start, what, seconds, ok, detail). `busy` says what it is doing, since when."""

    def __init__(self, every):
        super().__init__(daemon=True)
        self.every = every
        self.samples = []
        self.busy = None
        self.halt = threading.Event()

    def timed(self, what, fn):
        t0 = time.monotonic()
        self.busy = (what, t0)
        try:
            ok, detail, result = True, "", fn()
        except Exception as e:  # whatever it is, it is this probe's failure, reported
            ok, detail, result = False, f"{type(e).__name__}: {e}", None
        if isinstance(result, tuple):  # (ok, detail)
            ok, detail, result = result[0], result[1], None
        self.busy = None
        self.samples.append((t0, what, time.monotonic() - t0, ok, detail))
        return result

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic()
            self.probe()
            self.halt.wait(max(0.0, self.every - (time.monotonic() - t)))


class Poller(Watcher):
    """status, stats and metrics on the control socket every 0.5 s, each on a connection of
    its own; keeps the peaks of what status says."""

    def __init__(self, ctl):
        super().__init__(0.5)
        self.ctl = ctl
        self.peak = {"memory": 0, "bounce_leased": 0, "bounce_waits": 0, "a_in_flight": 0}

    def ask(self, cmd):
        def one():
            line = ask_control(self.ctl, cmd, 10)
            reply = json.loads(line) if line else None
            if not (reply and reply.get("ok")):
                return False, f"reply {line!r}"
            return reply
        return self.timed(cmd, one)

    def note(self, s):
        self.peak["memory"] = max(self.peak["memory"], s.get("memory", 0))
        b = s.get("bounce", {})
        self.peak["bounce_leased"] = max(self.peak["bounce_leased"], b.get("leased", 0))
        self.peak["bounce_waits"] = b.get("waits", 0)
        for e in s.get("exports", []):
            if e.get("name") == "a":
                self.peak["a_in_flight"] = max(self.peak["a_in_flight"], e.get("in_flight", 0))

    def probe(self):
        s = self.ask("status")
        if s:
            self.note(s)
        self.ask("stats")
        self.ask("metrics")


class Newcomers(Watcher):
    """A new connection to the quiet export every 0.5 s: connect, read 4 KiB of the tail no
    one writes, compare, disconnect; every step bounded by 10 s. While the noisy client's
    buffers hold the whole of memory-max, nbdkit may drop a new connection whose threads
    cannot start, or fail its first read with ENOMEM (its buffer): as a client would, the
    newcomer then tries again, up to ATTEMPTS times; the attempts that failed are kept."""

    ATTEMPTS = 5

    def __init__(self, sock, name, tail):
        super().__init__(0.5)
        self.sock, self.name, self.tail = sock, name, tail
        self.failed_attempts = []

    def one(self):
        for attempt in range(self.ATTEMPTS):
            t0 = time.monotonic()
            try:
                r = self.attempt()
            except Exception as e:  # dropped, ENOMEM, a step not done within 10 s
                r = False, f"{type(e).__name__}: {e}"
            if r is None or attempt == self.ATTEMPTS - 1:
                return r
            self.failed_attempts.append((t0, time.monotonic() - t0, r[1]))
            if self.halt.wait(0.1):
                return r

    def attempt(self):
        deadline = time.monotonic() + 10
        h = nbd.NBD()
        h.set_export_name(self.name)
        h.aio_connect_unix(self.sock)
        wait_for(h, lambda: not h.aio_is_connecting(), deadline, "handshake")
        if not h.aio_is_ready():
            return False, "the handshake failed"
        buf = nbd.Buffer(BLOCK)
        cookie = h.aio_pread(buf, h.get_size() - BLOCK)
        wait_for(h, lambda: h.aio_command_completed(cookie), deadline, "read")
        h.shutdown()
        if buf.to_bytearray() != self.tail:
            return False, "read other bytes than the tail holds"
        return None

    def probe(self):
        self.timed("newcomer", self.one)


class LoadWatch(threading.Thread):
    """Reads the noisy client's counter lines."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.last = None
        self.changed = threading.Condition()

    def run(self):
        for line in self.proc.stdout:
            with self.changed:
                self.last = json.loads(line)
                self.changed.notify_all()

    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self.last and pred(self.last)):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self.changed.wait(min(left, 0.5))
            return True


class Cpu:
    """What the processes of the scenario used of the CPUs, and waited for them, so far:
    the quiet client, the server's threads that existed before the noisy client came (its
    listener, control workers, and the quiet connection's threads), the whole server, the
    noisy client, and the machine (CPU pressure: time in which something waited)."""

    def __init__(self, server, quiet, noisy=None):
        self.t = time.monotonic()
        self.quiet = self.sched(quiet, None)
        self.server_quiet = self.sched(server, Cpu.quiet_tids)
        self.server = self.ticks(server)
        self.noisy = self.ticks(noisy) if noisy else 0
        with open("/proc/pressure/cpu") as f:
            self.pressure = int(f.readline().split("total=")[1]) / 1e6

    quiet_tids = None

    @staticmethod
    def tids(pid):
        try:
            return set(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            return set()  # it has ended

    @staticmethod
    def sched(pid, tids):
        """(seconds on a CPU, seconds waiting for one) of pid's threads (of `tids` only)."""
        run = wait = 0
        for tid in (tids if tids is not None else Cpu.tids(pid)):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    r, w, _ = f.read().split()
            except OSError:
                continue  # ended
            run, wait = run + int(r), wait + int(w)
        return run / 1e9, wait / 1e9

    @staticmethod
    def ticks(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SchedSampler(threading.Thread):
    """Every 20 ms: the CPU time and the wait for a CPU, so far, of the quiet client and of
    the server's quiet-side threads, and where in the kernel each of those threads is (its
    state and innermost kernel function): where a slow quiet request's time went."""

    def __init__(self, server, quiet):
        super().__init__(daemon=True)
        self.server, self.quiet = server, quiet
        self.samples = []  # (t, client (run, wait), server (run, wait), {where: threads})
        self.halt = threading.Event()

    def where(self):
        at = {}
        for tid in Cpu.quiet_tids:
            try:
                with open(f"/proc/{self.server}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{self.server}/task/{tid}/stack") as f:
                    top = f.readline().split()[1].split("+")[0] if state != "R" else "running"
            except (OSError, IndexError):
                continue
            k = f"{state} {top}"
            at[k] = at.get(k, 0) + 1
        return at

    def run(self):
        while not self.halt.wait(0.02):
            self.samples.append((time.monotonic(), Cpu.sched(self.quiet, None),
                                 Cpu.sched(self.server, Cpu.quiet_tids), self.where()))

    def explain(self, t0, t1):
        """The samples around [t0, t1]: the window they cover; the client's and the
        server's running and waiting in it; where the server's threads were, on average."""
        before = [x for x in self.samples if x[0] <= t0]
        after = [x for x in self.samples if x[0] >= t1]
        if not before or not after:
            return None
        a, b = before[-1], after[0]
        inside = [x[3] for x in self.samples if a[0] <= x[0] <= b[0]]
        at = {}
        for d in inside:
            for k, n in d.items():
                at[k] = at.get(k, 0) + n / len(inside)
        return (b[0] - a[0], b[1][0] - a[1][0], b[1][1] - a[1][1], b[2][0] - a[2][0],
                b[2][1] - a[2][1], at)


class Phase:
    def __init__(self, name, what, cpu):
        self.name, self.cpu0, self.cpu1 = name, cpu, None
        self.t0 = announce(f"{name}: {what}")
        self.t1 = None

    def end(self, cpu):
        self.t1, self.cpu1 = time.monotonic(), cpu


def announce(what):
    t = time.monotonic()
    print(f"[{t:.1f}] {what}", flush=True)
    return t


def throttle(cgroup, dev, bps):
    for rw in ("read", "write"):
        with open(os.path.join(cgroup, f"blkio.throttle.{rw}_bps_device"), "w") as f:
            f.write(f"{dev} {bps}\n")


def scenario(args, quiet, poller):
    """Runs the phases; returns them, the noisy client's counters and what it did."""
    me, py = os.path.abspath(__file__), sys.executable
    status = poller.ask("status")
    if not status:
        raise RuntimeError("the control socket does not answer status")
    server = status["pid"]
    cpu = lambda noisy=None: Cpu(server, quiet.pid, noisy.pid if noisy else None)
    phases, seen = {}, {}
    time.sleep(args.warmup)  # the quiet connection's worker threads all serve once
    Cpu.quiet_tids = Cpu.tids(server)
    sampler = SchedSampler(server, quiet.pid)
    sampler.start()
    seen["sampler"] = sampler
    ph = phases["alone"] = Phase("alone", "the quiet client alone", cpu())
    time.sleep(args.alone)
    ph.end(cpu())

    # Not the server: in a CPU group of its own, with the weight of nice 19.
    noisy = subprocess.Popen(["sh", "-c", f'echo $$ >{args.noisy_cpu}/cgroup.procs && exec "$@"',
                              "-", py, me, "load", args.noisy_sock or args.sock, args.noisy],
                             stdout=subprocess.PIPE, text=True)
    try:
        watch = LoadWatch(noisy)
        watch.start()
        if not watch.wait_for(lambda c: c["full_depth"], 60):
            raise RuntimeError(f"the noisy client never had {CONNS} x {DEPTH} requests in "
                               f"flight: {watch.last}")
        time.sleep(args.ramp)
        ph = phases["slow"] = Phase("slow", "the noisy client at full depth on its slow disk",
                                    cpu(noisy))
        seen["slow0"] = watch.last
        time.sleep(args.load)
        seen["slow1"] = watch.last
        ph.end(cpu(noisy))

        throttle(args.blkio, args.dev, 1)  # nothing more gets through
        announce("the noisy export's disk hangs")
        time.sleep(args.settle)
        flush = {}

        def ask_flush():
            flush["t0"] = time.monotonic()
            try:
                flush["reply"] = ask_control(args.ctl, "flush", 120)
            except OSError as e:
                flush["reply"] = f"{type(e).__name__}: {e}"
            flush["t1"] = time.monotonic()
        flusher = threading.Thread(target=ask_flush, daemon=True)
        flusher.start()
        ph = phases["hang"] = Phase("hang", "a flush asked on the control socket", cpu(noisy))
        seen["hang0"] = watch.last
        time.sleep(args.hang)
        seen["hang1"] = watch.last
        ph.end(cpu(noisy))

        throttle(args.blkio, args.dev, 0)  # no limit at all
        ph = phases["released"] = Phase("released", "the noisy export's disk has no limit now",
                                        cpu(noisy))
        noisy.send_signal(signal.SIGUSR1)
        seen["healthy"] = watch.wait_for(
            lambda c: c["marked"] and c["conns_ok_since_mark"] == CONNS, 60)
        seen["healthy_after"] = time.monotonic() - ph.t0
        flusher.join(60)
        seen["flush"] = flush
        time.sleep(1)
        ph.end(cpu(noisy))
        noisy.send_signal(signal.SIGTERM)
        watch.wait_for(lambda c: c["final"], 60)
        seen["final"] = watch.last
        seen["release_state"] = watch.last
    finally:
        sampler.halt.set()
        if noisy.poll() is None:
            noisy.kill()
    return phases, seen


def quiet_samples(path, stuck):
    """(starts, seconds, kinds) of the quiet client's requests; one it was stuck in when
    it was stopped counts with the time it had taken by then."""
    raw = array.array("d")
    with open(path, "rb") as f:
        raw.frombytes(f.read())
    raw = raw[:len(raw) // 3 * 3]
    if stuck:
        raw.extend((stuck[0], stuck[1] - stuck[0], -1.0))
    return raw[0::3], raw[1::3], raw[2::3]


def report(phases, seen, samples, poller, newcomers, check):
    starts, lens, kinds = samples
    ms = lambda s: s * 1000
    res = {}
    print(f"quiet export, 4 KiB at depth 1 ({len(starts)} requests, every read verified):")
    for name in ("alone", "slow", "hang"):
        ph = phases[name]
        idx = [i for i in range(len(starts)) if ph.t0 <= starts[i] < ph.t1]
        v = res[name] = sorted(lens[i] for i in idx)
        r = sorted(lens[i] for i in idx if kinds[i] == 0)
        w = sorted(lens[i] for i in idx if kinds[i] == 1)
        dur = ph.t1 - ph.t0
        c0, c1 = ph.cpu0, ph.cpu1
        n = max(1, len(v))
        gone = c1.server < c0.server  # the server ended during the phase
        print(f"  {name:6} {len(v):6} requests  p50 {ms(pct(v, 50)):6.3f} ms  "
              f"p99 {ms(pct(v, 99)):7.3f} ms (reads {ms(pct(r, 99)):7.3f}, writes "
              f"{ms(pct(w, 99)):7.3f})  max {ms(v[-1] if v else 0):7.1f} ms")
        if gone:
            print("         the server ended during this phase")
            continue
        per = lambda a, b: ms(b - a) / n
        print(f"         per request: the quiet client ran {per(c0.quiet[0], c1.quiet[0]):.3f} ms "
              f"and waited {per(c0.quiet[1], c1.quiet[1]):.3f} ms for a CPU; the server's "
              f"quiet-side threads ran {per(c0.server_quiet[0], c1.server_quiet[0]):.3f} ms and "
              f"waited {per(c0.server_quiet[1], c1.server_quiet[1]):.3f} ms")
        print(f"         CPUs used: server {(c1.server - c0.server) / dur:.2f}, noisy client "
              f"{(c1.noisy - c0.noisy) / dur:.2f}; machine: something waited for a CPU "
              f"{100 * (c1.pressure - c0.pressure) / dur:.0f}% of the time")
    print("the slowest quiet requests, and where their time went (in a window of samples "
          "taken every 20 ms around each: CPU time and wait for a CPU of the quiet client, "
          "and of the server's threads that serve it):")
    slowest = sorted(range(len(starts)), key=lambda i: lens[i])[-6:]
    for i in reversed(slowest):
        x = seen["sampler"].explain(starts[i], starts[i] + lens[i])
        where = next((k for k, ph in phases.items() if ph.t0 <= starts[i] < ph.t1), "between")
        kind = {0: "read ", 1: "write"}.get(kinds[i], "stuck")
        line = f"  {ms(lens[i]):7.1f} ms {kind} ({where})"
        if x and x[3] < 0:
            line += ": the server ended meanwhile"
        elif x:
            line += (f": in {ms(x[0]):.0f} ms the client ran {ms(x[1]):.1f} and waited "
                     f"{ms(x[2]):.1f}, the server ran {ms(x[3]):.1f} and waited "
                     f"{ms(x[4]):.1f}; the server's threads were at "
                     + ", ".join(f"{k} {n:.1f}" for k, n in
                                 sorted(x[5].items(), key=lambda kv: -kv[1])))
        print(line)
    s0, s1, f = seen["slow0"], seen["slow1"], seen["final"]
    dur = s1["t"] - s0["t"]
    print(f"noisy export: {(s1['ok_bytes'] - s0['ok_bytes']) / MIB / dur:.1f} MiB/s on its slow "
          f"disk ({s1['ok'] - s0['ok']} requests in {dur:.1f} s), "
          f"{seen['hang1']['ok'] - seen['hang0']['ok']} completed while it hung; in all "
          f"{f['submitted']} sent, {f['ok']} ok, {f['enomem']} ENOMEM, {f['oversized']} "
          f"oversized, {f['disconnects']} connections closed by the server ({f['lost']} "
          f"requests lost with them), {f['connects']} opened, {f['refused']} refused, other "
          f"errors {f['errors'] or 'none'}, at most {f['max_inflight']} in flight")
    if seen["healthy"]:
        print(f"  released: every one of its {CONNS} connections completed requests again "
              f"within {seen['healthy_after']:.1f} s")
    pk = poller.peak
    print(f"server: peak private memory {pk['memory'] / MIB:.0f} MiB, bounce leased at most "
          f"{pk['bounce_leased'] / MIB:.1f} MiB, {pk['bounce_waits']} bounce waits, the noisy "
          f"export had at most {pk['a_in_flight']} requests in flight")
    worst_ctl = 0.0
    for name in ("alone", "slow", "hang", "released"):
        ph = phases[name]
        line = []
        for what in ("status", "stats", "metrics", "newcomer"):
            s = [x for x in poller.samples + newcomers.samples
                 if x[1] == what and ph.t0 <= x[0] < ph.t1]
            worst = max((x[2] for x in s), default=0.0)
            bad = [x for x in s if not x[3]]
            line.append(f"{what} {len(s)}x max {ms(worst):.0f} ms")
            check(s, f"{name}: no {what} was asked")
            check(not bad, f"{name}: {what} failed: {bad[:1]}")
            # A newcomer's handshake starts threads and opens the export: it must succeed,
            # and is bounded loosely; the control socket within 1 s.
            limit = 5.0 if what == "newcomer" else 1.0
            check(worst < limit, f"{name}: {what} took {worst:.3f} s (limit {limit} s)")
            if what != "newcomer":
                worst_ctl = max(worst_ctl, worst)
        print(f"  control socket, {name:8}: " + ", ".join(line))
    print(f"control socket: slowest answer {ms(worst_ctl):.0f} ms")
    fa = newcomers.failed_attempts
    print(f"newcomers: {len(fa)} attempts failed and were tried again"
          + "".join(f"\n  {ms(d):.0f} ms: {why}" for _, d, why in fa[:5]))
    fl = seen["flush"]
    check(fl.get("t1"), "the flush asked during the hang never answered")
    if fl.get("t1"):
        waited = fl["t1"] > phases["released"].t0
        asked = [x for x in poller.samples if fl["t0"] <= x[0] < fl["t1"]]
        print(f"flush asked during the hang: answered {fl['reply']} after "
              f"{fl['t1'] - fl['t0']:.1f} s, "
              + (f"{fl['t1'] - phases['released'].t0:.1f} s after release; meanwhile "
                 f"{len(asked)} other commands were answered" if waited
                 else "before release (the disk had nothing of it to hold)"))
        check(fl["reply"] and fl["reply"].startswith("{") and json.loads(fl["reply"]).get("ok"),
              f"the flush asked during the hang failed: {fl['reply']}")
    p99 = {k: pct(v, 99) for k, v in res.items()}
    for name in ("slow", "hang"):
        check(len(res[name]) > 100, f"{name}: only {len(res[name])} quiet requests")
        print(f"{name}: quiet p99 {p99[name] / p99['alone']:.1f} x alone")
        check(p99[name] <= P99_LIMIT,
              f"{name}: quiet p99 {ms(p99[name]):.3f} ms above {ms(P99_LIMIT):.0f} ms")
    for name in ("alone", "slow", "hang"):
        worst = res[name][-1] if res[name] else 0
        check(worst < 0.2, f"{name}: a quiet request took {ms(worst):.1f} ms (limit 200 ms)")
    check(f["full_depth"], "the noisy client never reached full depth")
    check(f["oversized"] and f["disconnects"], "no oversized request closed a noisy connection")
    check(seen["healthy"], f"released: only {seen['release_state']['conns_ok_since_mark']} of "
          f"{CONNS} noisy connections completed a request again within 60 s")


def run(args):
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print(f"FAIL: {what}", flush=True)

    h = connect(args.sock, args.quiet)
    tail = h.pread(BLOCK, h.get_size() - BLOCK)
    h.shutdown()
    out = os.path.join(args.tmp, "quiet.lat")
    quiet = subprocess.Popen([sys.executable, os.path.abspath(__file__), "probe", args.sock,
                              args.quiet, out],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    poller = Poller(args.ctl)
    newcomers = Newcomers(args.sock, args.quiet, tail)
    try:
        if quiet.stdout.readline().strip() != "ready":
            raise RuntimeError("the quiet client did not start")
        poller.start()
        newcomers.start()
        phases, seen = scenario(args, quiet, poller)
    except RuntimeError as e:
        check(False, str(e))
        phases = None
    finally:
        poller.halt.set()
        newcomers.halt.set()
        quiet.stdin.close()
    stuck = None
    try:
        quiet.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with open(out + ".now", "rb") as f:
            t0 = struct.unpack("d", f.read(8))[0]
        stuck = (t0, time.monotonic()) if t0 else None
        quiet.kill()
        quiet.wait()
        check(False, "the quiet client did not stop" + (
            f": its request of {t0:.3f} had not completed after {stuck[1] - t0:.1f} s"
            if stuck else ""))
    said = quiet.stdout.read()
    for w in (poller, newcomers):
        w.join(30)
        if w.busy:
            check(False, f"{w.busy[0]} asked at {w.busy[1]:.3f} had no answer "
                  f"{time.monotonic() - w.busy[1]:.0f} s later")
    check(quiet.returncode == 0 and "done" in said,
          f"the quiet client failed (exit {quiet.returncode})")
    if phases:
        report(phases, seen, quiet_samples(out, stuck), poller, newcomers, check)
    return 1 if failures else 0


def main():
    if sys.argv[1] == "load":
        Load(sys.argv[2], sys.argv[3], 7).run()
        return 0
    if sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("--sock", required=True)
    p.add_argument("--ctl", required=True)
    p.add_argument("--noisy", default="a")
    p.add_argument("--noisy-sock", help="serve the noisy load from this (another) server: "
                   "the reference for what the machine, not the shared server, costs")
    p.add_argument("--quiet", default="b")
    p.add_argument("--blkio", required=True, help="the server's blkio cgroup")
    p.add_argument("--noisy-cpu", required=True, help="the cpu cgroup of the noisy client")
    p.add_argument("--dev", required=True, help="MAJ:MIN of the noisy export's disk")
    p.add_argument("--tmp", required=True)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--alone", type=float, default=15)
    p.add_argument("--ramp", type=float, default=3)
    p.add_argument("--load", type=float, default=30)
    p.add_argument("--settle", type=float, default=2)
    p.add_argument("--hang", type=float, default=15)
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
