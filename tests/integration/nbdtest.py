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
    time; at the end every block must hold every connection's last byte."""
    barrier = threading.Barrier(connections)
    nblocks = min(size // block, 16)

    def worker(k):
        h = connect(uri, strict=False)
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
