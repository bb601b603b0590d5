"""A bounded concurrent fuzz: threads, each with its own connection, send random unaligned
requests checked against a shadow copy. Each thread owns segments of the image, most shorter
than a block and interleaved with others' (so threads share blocks); it changes only its own
bytes and checks only those, which no other thread may change. Trimmed bytes: old or zero."""
import bisect
import random
import sys
import threading
import time

import nbd

THREADS = 4
STOP = threading.Event()  # set by the first thread that fails
KINDS = ["read"] * 30 + ["write"] * 30 + ["zero"] * 10 + ["trim"] * 9 + ["flush"] * 3 + \
        ["status"] * 12 + ["cache"] * 2 + ["fast_zero"] * 4


class Layout:
    """Who may change which bytes: the image cut into segments, each with one owner."""

    def __init__(self, size, threads, rng):
        self.starts, self.owners = [], []
        off = 0
        while off < size:
            r = rng.random()
            n = (rng.randint(1, 700) if r < 0.85 else
                 rng.randint(700, 70000) if r < 0.97 else rng.randint(70000, 2500000))
            self.starts.append(off)
            self.owners.append(rng.randrange(threads))
            off += n
        self.ends = self.starts[1:] + [size]
        self.mine = [[i for i, o in enumerate(self.owners) if o == t] for t in range(threads)]

    def owned_in(self, t, start, end):
        """The pieces of [start, end) that thread t owns."""
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        while i < len(self.starts) and self.starts[i] < end:
            if self.owners[i] == t:
                yield max(start, self.starts[i]), min(end, self.ends[i])
            i += 1


class Shadow:
    """What the image must hold: `data`, except that where `fuzzy` is 1 zero is allowed too."""

    def __init__(self, data):
        self.data = bytearray(data)
        self.fuzzy = bytearray(len(data))

    def mismatch(self, got, start, end, base=0):
        """The first offset in [start, end) where got (which maps `base`) is not allowed, or None."""
        want = self.data[start:end]
        g = got[start - base:end - base]
        if g == want:
            return None
        fz = self.fuzzy[start:end]
        for i in range(end - start):
            if g[i] != want[i] and not (fz[i] and g[i] == 0):
                return start + i
        return None


def describe(op):
    kind, off, n, flags = op
    return f"{kind} {n}@{off}" + (f" flags 0x{flags:x}" if flags else "")


class Worker:
    def __init__(self, uri, t, seed, layout, shadow, size, deadline, max_ops):
        self.t, self.layout, self.shadow, self.size = t, layout, shadow, size
        self.rng = random.Random(seed * 100 + t)
        self.deadline, self.max_ops = deadline, max_ops
        self.h = nbd.NBD()
        self.h.set_strict_mode(0)
        self.h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        self.h.connect_uri(uri)
        can = {"zero": self.h.can_zero(), "trim": self.h.can_trim(), "cache": self.h.can_cache(),
               "fast_zero": self.h.can_fast_zero(),
               "status": self.h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)}
        self.kinds = [k for k in KINDS if can.get(k, True)]
        self.can = can
        self.ops, self.recent, self.error = 0, [], None
        self.counts = {}

    def owned_range(self):
        i = self.rng.choice(self.layout.mine[self.t])
        s, e = self.layout.starts[i], self.layout.ends[i]
        if self.rng.random() < 0.5:
            return s, e - s
        a = self.rng.randrange(s, e)
        return a, self.rng.randint(1, e - a)

    def any_range(self):
        r = self.rng.random()
        n = (self.rng.randint(1, 1000) if r < 0.6 else
             self.rng.randint(1000, 70000) if r < 0.9 else self.rng.randint(70000, 3000000))
        off = self.rng.randrange(self.size)
        return off, min(n, self.size - off)

    def check_read(self, got, off, n, op):
        for s, e in self.layout.owned_in(self.t, off, off + n):
            bad = self.shadow.mismatch(got, s, e, off)
            if bad is not None:
                raise AssertionError(
                    f"thread {self.t}: {describe(op)}: byte {bad} reads {got[bad - off]}, "
                    f"want {self.shadow.data[bad]}" +
                    (" or 0 (trimmed)" if self.shadow.fuzzy[bad] else ""))

    def check_status(self, off, n, op):
        zeroes = []

        def extent(ctx, start, entries, err):
            for i in range(0, len(entries), 2):
                if entries[i + 1] & nbd.STATE_ZERO:
                    zeroes.append((start, min(start + entries[i], off + n)))
                start += entries[i]
            return 0
        self.h.block_status(n, off, extent)
        for zs, ze in zeroes:
            for s, e in self.layout.owned_in(self.t, zs, ze):
                bad = self.shadow.mismatch(bytes(e - s), s, e, s)
                if bad is not None:
                    raise AssertionError(f"thread {self.t}: {describe(op)}: byte {bad} reported "
                                         f"zero, but holds {self.shadow.data[bad]}")

    def step(self):
        kind = self.rng.choice(self.kinds)
        rnd = self.rng.random()
        h, sh = self.h, self.shadow
        if kind in ("read", "status", "cache"):
            off, n = self.any_range()
        elif kind != "flush":
            off, n = self.owned_range()
        else:
            off, n = 0, 0
        flags = nbd.CMD_FLAG_FUA if rnd < 0.2 and kind in ("write", "zero", "trim") else 0
        if kind == "zero" and rnd > 0.6:
            flags |= nbd.CMD_FLAG_NO_HOLE
        if kind == "fast_zero":
            flags |= nbd.CMD_FLAG_FAST_ZERO
        op = (kind, off, n, flags)
        self.recent = (self.recent + [describe(op)])[-12:]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "read":
            self.check_read(h.pread(n, off), off, n, op)
        elif kind == "write":
            buf = self.rng.randbytes(n)
            h.pwrite(buf, off, flags)
            sh.data[off:off + n] = buf
            sh.fuzzy[off:off + n] = bytes(n)
        elif kind in ("zero", "fast_zero"):
            try:
                h.zero(n, off, flags)
            except nbd.Error as e:
                if kind == "zero" or e.errnum != 95:  # ENOTSUP: a fast zero may be refused
                    raise
                sh.fuzzy[off:off + n] = b"\1" * n  # unspecified whether anything changed
                self.counts["fast_zero refused"] = self.counts.get("fast_zero refused", 0) + 1
                return
            sh.data[off:off + n] = bytes(n)
            sh.fuzzy[off:off + n] = bytes(n)
        elif kind == "trim":
            h.trim(n, off, flags)
            sh.fuzzy[off:off + n] = b"\1" * n
        elif kind == "flush":
            h.flush()
        elif kind == "status":
            self.check_status(off, n, op)
        elif kind == "cache":
            h.cache(n, off)

    def run(self):
        try:
            while self.ops < self.max_ops and not STOP.is_set() and (
                    self.max_ops != float("inf") or time.monotonic() < self.deadline):
                self.step()
                self.ops += 1
            self.h.flush()
            self.h.shutdown()
        except Exception as e:  # reported by the main thread, with this thread's last requests
            self.error = e
            STOP.set()


def init(path, size, seed):
    """A fresh image: random data in most MiB, holes in the others."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 1 << 20):
            if rng.random() < 0.75:
                f.seek(off)
                f.write(rng.randbytes(min(1 << 20, size - off)))


def fuzz(uri, image, seed, seconds, max_ops, out):
    data = open(image, "rb").read()
    size = len(data)
    layout = Layout(size, THREADS, random.Random(seed))
    shadow = Shadow(data)
    deadline = time.monotonic() + seconds
    workers = [Worker(uri, t, seed, layout, shadow, size, deadline, max_ops)
               for t in range(THREADS)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {}
    for w in workers:
        for k, v in w.counts.items():
            counts[k] = counts.get(k, 0) + v
    print(f"  {THREADS} connections, {len(layout.starts)} segments, "
          f"{sum(w.ops for w in workers)} requests: " +
          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
          "; advertised: " + " ".join(k for k, v in workers[0].can.items() if v))
    for w in workers:
        if w.error:
            print(f"thread {w.t} failed at its request {w.ops} (LOOPDIO_FUZZ_OPS={w.ops + 1} "
                  f"stops there), its last requests:\n    " +
                  "\n    ".join(w.recent), file=sys.stderr)
            raise w.error
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    for off in range(0, size, 8 << 20):
        n = min(8 << 20, size - off)
        bad = shadow.mismatch(h.pread(n, off), off, off + n, off)
        if bad is not None:
            raise AssertionError(f"final read: byte {bad} differs from the shadow")
    h.shutdown()
    open(out + ".data", "wb").write(shadow.data)
    open(out + ".fuzzy", "wb").write(shadow.fuzzy)


def compare(image, out):
    shadow = Shadow(b"")
    shadow.data = open(out + ".data", "rb").read()
    shadow.fuzzy = open(out + ".fuzzy", "rb").read()
    got = open(image, "rb").read()
    if len(got) != len(shadow.data):
        raise AssertionError(f"the image is {len(got)} bytes, was {len(shadow.data)}")
    for off in range(0, len(got), 1 << 20):
        end = min(len(got), off + (1 << 20))
        bad = shadow.mismatch(got, off, end)
        if bad is not None:
            raise AssertionError(f"image file: byte {bad} is {got[bad]}, want "
                                 f"{shadow.data[bad]}" + (" or 0" if shadow.fuzzy[bad] else ""))
    print(f"  the image file matches the shadow ({shadow.fuzzy.count(1)} bytes trimmed, or under "
          f"a refused fast zero: old or zero)")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "init":
        init(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "run":
        _, _, uri, image, seed, seconds, ops, out = sys.argv
        fuzz(uri, image, int(seed), float(seconds), int(ops) if ops != "0" else float("inf"), out)
    else:
        compare(sys.argv[2], sys.argv[3])
