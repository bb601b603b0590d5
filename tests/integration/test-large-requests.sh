#!/usr/bin/env bash
# Unaligned requests larger than the 8 MiB bounce window: a 20 MiB write at 4097, reads of
# 20 MiB and 32 MiB (the advertised maximum) at odd offsets, and a 32 MiB write at 511, each
# cut into several windows; then two connections at once writing interleaved 9 MiB + 333-byte
# chunks (each owns every other chunk; neighbours share the blocks at their edges, so the
# read-modify-writes of the edges race), several writes in flight, three rounds. Every byte is
# checked against a shadow copy through the export and in the file. ext4 and xfs on a
# 4K-sector loop device, every engine.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup

size=$((96 << 20))
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/large.img
  for engine in $ENGINES; do
    random_file "$img" $size
    cp "$img" "$T/shadow"
    start_server -- file="$img" aio=$engine
    assert_engine "$URI" "$engine"
    $PYTHON - "$URI" "$T/shadow" <<'PY' || fail "$fs/$engine"
import random, sys, threading, nbd, nbdtest
uri, shadow_path = sys.argv[1:]
MIB = 1 << 20
shadow = bytearray(open(shadow_path, "rb").read())
rng = random.Random(20)

def write(h, off, data):
    h.pwrite(data, off)
    shadow[off:off + len(data)] = data

def check(h, off, n, what):
    if h.pread(n, off) != bytes(shadow[off:off + n]):
        raise AssertionError(f"{what}: {n} bytes at {off} differ from the shadow")

def check_all(h, what):  # in 16 MiB + 1 pieces: NBD requests stop at 64 MiB
    for off in range(0, len(shadow), 16 * MIB + 1):
        check(h, off, min(16 * MIB + 1, len(shadow) - off), what)

h = nbdtest.connect(uri, strict=False)
write(h, 4097, rng.randbytes(20 * MIB))
check(h, 4097, 20 * MIB, "20 MiB written at 4097")
check(h, 4097 + 333, 20 * MIB, "20 MiB at 4430")
check(h, 1, 32 * MIB, "32 MiB at 1")
write(h, 511, rng.randbytes(32 * MIB))
check(h, 511, 32 * MIB, "32 MiB written at 511")
check_all(h, "everything")

# Two connections, interleaved chunks, all of a round's writes in flight at once.
S, START = 9 * MIB + 333, 4097
chunks = [(START + i * S, S) for i in range((len(shadow) - START) // S)]

def writer(k):
    c = nbdtest.connect(uri, strict=False)
    mine = chunks[k::2]
    for r in range(3):
        bufs = []
        for off, n in mine:
            data = random.Random(f"{k}/{r}/{off}").randbytes(n)
            bufs.append((c.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off), data, off))
        for cookie, data, off in bufs:
            while not c.aio_command_completed(cookie):
                c.poll(-1)
    for off, n in mine:
        shadow[off:off + n] = random.Random(f"{k}/2/{off}").randbytes(n)
    c.flush()
    c.shutdown()

nbdtest.run_threads(writer, 2)
check_all(h, "after the two connections")
h.shutdown()
open(shadow_path, "wb").write(shadow)
print(f"  20 and 32 MiB unaligned requests; 2 connections x 3 rounds of {len(chunks) // 2}"
      f" chunks of {S} bytes: every byte right")
PY
    stop_server
    cmp "$img" "$T/shadow" || fail "$fs/$engine: the image file differs from the shadow"
    pass "$fs/$engine"
  done
done
