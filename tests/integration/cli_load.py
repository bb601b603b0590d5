"""A concurrent data-integrity load for the `loopdio` command's tests.

Several libnbd connections, each in a thread of its own (libnbd releases the GIL while a
request is in flight), write and read random unaligned ranges and check every read against
a shadow copy of the export, until a stop file appears. Each connection owns one part of
the export, with the boundaries in the middle of blocks, so neighbours read-modify-write the
same block at the same time. At the end every part is read back whole, and the shadow is
written to a file for the caller to compare with the image.

    python3 cli_load.py URI SHADOW_OUT STOP_FILE CONNECTIONS SEED
"""
import os
import random
import sys

import nbd
import nbdtest

MAX_LEN = 70000
MIN_ROUNDS = 200  # per connection, even if the stop file comes early
CHUNK = 1 << 20


def read_all(h, size):
    return bytearray(b"".join(h.pread(min(CHUNK, size - off), off) for off in range(0, size, CHUNK)))


def worker(uri, shadow, lo, hi, stop, seed, counts, k):
    rng = random.Random(seed)
    h = nbdtest.connect(uri, strict=False)
    rounds = 0
    while rounds < MIN_ROUNDS or not os.path.exists(stop):
        off = rng.randrange(lo, hi)
        n = rng.randint(1, min(hi - off, MAX_LEN))
        if rng.random() < 0.5:
            data = rng.randbytes(n)
            h.pwrite(data, off, nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0)
            shadow[off:off + n] = data
        else:
            got = h.pread(n, off)
            if got != bytes(shadow[off:off + n]):
                raise AssertionError(f"connection {k}: read {n}@{off} differs from what was written")
        rounds += 1
    h.flush()
    for off in range(lo, hi, CHUNK):
        n = min(CHUNK, hi - off)
        if h.pread(n, off) != bytes(shadow[off:off + n]):
            raise AssertionError(f"connection {k}: {n}@{off} differs at the end")
    h.shutdown()
    counts[k] = rounds


def main():
    uri, shadow_out, stop, connections, seed = sys.argv[1:]
    connections, seed = int(connections), int(seed)
    h = nbdtest.connect(uri)
    size = h.get_size()
    shadow = read_all(h, size)
    h.shutdown()
    # Part boundaries 123 bytes past a multiple of 4096: inside a block at any sector size.
    bounds = [0] + [k * size // connections // 4096 * 4096 + 123 for k in range(1, connections)] + [size]
    counts = [0] * connections
    try:
        nbdtest.run_threads(
            lambda k: worker(uri, shadow, bounds[k], bounds[k + 1], stop, seed * 1000 + k, counts, k),
            connections)
    except Exception as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    with open(shadow_out, "wb") as f:
        f.write(shadow)
    print(f"{sum(counts)} requests on {connections} connections, every read as written")


if __name__ == "__main__":
    main()
