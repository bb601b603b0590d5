#!/usr/bin/env bash
# Offsets above 4 GiB: on a sparse 6 GiB + 1234-byte image, unaligned writes and reads that
# cross 2 GiB and 4 GiB, start exactly there, cross 4 GiB with more than the 8 MiB bounce
# window, and touch the partial last block, read back right through the export and in the
# file, while the places a 32-bit offset would wrap to stay zero. Then the same through
# offset=4G+4096 (losetup -o above 4 GiB). ext4 and xfs on a 4K-sector loop device, every
# engine.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup

GIB=$((1 << 30))
size=$((6 * GIB + 1234))
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  for engine in $ENGINES; do
    for base in 0 $((4 * GIB + 4096)); do
      what="$fs/$engine, offset=$base"
      img=$mnt/big.img
      rm -f "$img"
      truncate -s $((base + size)) "$img"
      start_server -- file="$img" aio=$engine offset=$base sizelimit=$size
      assert_engine "$URI" "$engine"
      $PYTHON - "$URI" "$img" $base <<'PY' || fail "$what"
import sys, nbd, nbdtest
uri, path, base = sys.argv[1], sys.argv[2], int(sys.argv[3])
GIB, MIB = 1 << 30, 1 << 20
h = nbdtest.connect(uri, strict=False)
size = h.get_size()
assert size == 6 * GIB + 1234, size
cases = [(4 * GIB - 1000, 5000), (4 * GIB - 1, 2), (4 * GIB, 1), (4 * GIB + 1, 511),
         (4 * GIB - 3 * 4096 - 7, 9 * MIB + 13), (2 * GIB - 100, 300), (5 * GIB + 12345, 100000),
         (size - 777, 777), (size - 3 * MIB - 5, 3 * MIB + 5), (size - 1, 1), (4 * GIB + 4095, 2)]
shadow = nbdtest.SparseShadow()
for i, (off, n) in enumerate(cases):
    data = bytes((i * 53 + k * 7 + 1) % 251 + 1 for k in range(min(n, 4096))) * (n // 4096 + 1)
    h.pwrite(data[:n], off, nbd.CMD_FLAG_FUA if i % 3 == 0 else 0)
    shadow.write(off, data[:n])
    shadow.check("read back", h.pread(n, off), off)
h.flush()
# Every write again, with a margin, and the bytes a wrapped 32-bit offset would have hit.
for off, n in cases:
    lo, hi = max(0, off - 4096), min(size, off + n + 4096)
    shadow.check("re-read", h.pread(hi - lo, lo), lo)
    wrapped = off % (4 * GIB)
    if wrapped != off:
        shadow.check("32-bit wrap", h.pread(min(n, 16 * MIB), wrapped), wrapped)
h.shutdown()
with open(path, "rb") as f:
    for off, n in cases:
        f.seek(base + off)
        shadow.check("the image file", f.read(n), off)
print(f"  {len(cases)} writes between 2 GiB and {size} verified through the export and the file")
PY
      stop_server
      pass "$what"
    done
  done
done
