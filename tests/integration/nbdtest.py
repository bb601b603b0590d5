"""Helpers for integration tests that drive an export with libnbd (the nbdsh library).

Every helper talks to a real nbdkit over a real socket; strict mode is relaxed so that the
client sends unaligned requests exactly as given, the way a careless client would.
"""
import os
import random
import threading

import nbd


def connect(uri, strict=True):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def random_io(uri, size, rounds, seed, shadow, max_len=70000, connections=1):
    """Random unaligned reads and writes checked against `shadow` (a bytearray of the
    export), from `connections` handles in turn. Returns the number of requests."""
    rng = random.Random(seed)
    handles = [connect(uri, strict=False) for _ in range(connections)]
    for i in range(rounds):
        h = handles[i % connections]
        off = rng.randrange(size)
        n = rng.randint(1, min(size - off, max_len))
        if rng.random() < 0.5:
            data = rng.randbytes(n)
            flags = nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0
            h.pwrite(data, off, flags)
            shadow[off:off + n] = data
        else:
            got = h.pread(n, off)
            if got != bytes(shadow[off:off + n]):
                raise AssertionError(f"read {n}@{off} differs from what was written")
    for h in handles:
        h.flush()
        h.shutdown()
    return rounds


def connect_or_reason(sock, name):
    """A handle to export `name` on the Unix socket `sock` (strict mode relaxed), or the
    reason the server gave for refusing it (a str): the message it sends with its error
    reply, which libnbd before 1.16 shows only in its debug output, where it is read from
    here. Raises when the connection fails without a reason."""
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
            raise AssertionError(f"export {name!r}: the connection failed with no reason "
                                 f"from the server: {e}")
        return said[-1]
    h.set_debug(False)
    return h


def refusal(sock, name):
    """The reason the server gives for refusing export `name` on the Unix socket `sock`.
    Fails when the export is served, or when the connection fails in any other way than a
    refusal."""
    h = connect_or_reason(sock, name)
    if isinstance(h, str):
        return h
    h.shutdown()
    raise AssertionError(f"export {name!r} was served")


def run_threads(fn, n):
    """Runs fn(0) .. fn(n-1) in n threads at once; raises the first exception any raised,
    once every thread has finished."""
    errors = []

    def run(k):
        try:
            fn(k)
        except Exception as e:  # re-raised below, after every thread has finished
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def lost_update(uri, size, block, connections, rounds):
    """Each connection owns some bytes of every block and writes them, all at the same
    time; at the end every block must hold every connection's last byte. `uri` may be a
    list: connection k then uses uri[k % len(uri)] (two names of one file, say)."""
    uris = uri if isinstance(uri, list) else [uri]
    uri = uris[0]
    barrier = threading.Barrier(connections)
    nblocks = min(size // block, 16)

    def worker(k):
        h = connect(uris[k % len(uris)], strict=False)
        barrier.wait()
        for r in range(rounds):
            for b in range(nblocks):
                # Connection k owns bytes k, k+connections, ... of each block.
                off = b * block + k + connections * (r % 8)
                h.pwrite(bytes([(r % 250) + 1]), off)
        h.flush()
        h.shutdown()

    run_threads(worker, connections)
    h = connect(uri)
    for b in range(nblocks):
        blk = h.pread(block, b * block)
        for k in range(connections):
            for slot in range(8):
                last = max(r for r in range(rounds) if r % 8 == slot)
                want = (last % 250) + 1
                got = blk[k + connections * slot]
                if got != want:
                    raise AssertionError(
                        f"block {b}: connection {k} slot {slot} holds {got}, wrote {want} last")
    h.shutdown()


class SparseShadow:
    """What a large, mostly unwritten export must hold: zeroes, overlaid with every write in
    order. For images too large for a bytearray."""

    def __init__(self):
        self.writes = []  # (offset, bytes), oldest first

    def write(self, off, data):
        self.writes.append((off, bytes(data)))

    def expect(self, off, n):
        out = bytearray(n)
        for w_off, data in self.writes:
            lo, hi = max(off, w_off), min(off + n, w_off + len(data))
            if lo < hi:
                out[lo - off:hi - off] = data[lo - w_off:hi - w_off]
        return bytes(out)

    def check(self, what, got, off):
        want = self.expect(off, len(got))
        if got != want:
            bad = next(i for i in range(len(got)) if got[i] != want[i])
            raise AssertionError(f"{what}: {len(got)} bytes at {off}: first wrong byte at "
                                 f"{off + bad} (got {got[bad]}, want {want[bad]})")
