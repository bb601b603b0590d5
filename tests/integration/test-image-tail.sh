#!/usr/bin/env bash
# An image of 1 MiB + 100 bytes, whose last block is partial on every backing: reads and
# writes of the tail work with direct I/O, the file never changes size, and no byte is lost.
# On ext4 (512-byte alignment) and on xfs over a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup

size=$((1048576 + 100))
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/tail.img
  for engine in $ENGINES; do
    random_file "$img" $size
    cp "$img" "$T/shadow"
    start_server -- file="$img" directio=1 aio=$engine
    assert_engine "$URI" "$engine"
    $PYTHON - "$URI" "$T/shadow" $size <<'PY' || fail "$fs/$engine: tail I/O"
import sys, nbd, nbdtest
uri, shadow_path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
shadow = bytearray(open(shadow_path, "rb").read())
h = nbdtest.connect(uri, strict=False)
assert h.get_size() == size, h.get_size()
cases = [(size - 100, 100), (size - 1, 1), (size - 4096 - 50, 4096 + 50), (size - 600, 37),
         (size - 70000, 70000), (size - 100, 50)]
for i, (off, n) in enumerate(cases):
    data = bytes([(i * 37 + k) % 251 for k in range(n)])
    h.pwrite(data, off, nbd.CMD_FLAG_FUA if i % 2 else 0)
    shadow[off:off + n] = data
    assert h.pread(n, off) == data, f"tail read {n}@{off}"
assert h.pread(size, 0) == bytes(shadow), "whole image"
# The server refuses requests past the end; the kernel never sees them.
try:
    h.pread(200, size - 100)
    raise AssertionError("read past the end succeeded")
except nbd.Error:
    pass
h.flush()
h.shutdown()
open(shadow_path, "wb").write(shadow)
PY
    [ "$(stat -c %s "$img")" = $size ] || fail "$fs/$engine: file size changed to $(stat -c %s "$img")"
    stop_server
    cmp "$img" "$T/shadow" || fail "$fs/$engine: image differs from the shadow copy"
    pass "$fs/$engine: tail of a $size-byte image"
  done
done
