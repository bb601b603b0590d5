#!/usr/bin/env bash
# Multi-conn is advertised and true: a write acknowledged on one connection and a flush on
# another puts the data in the file, for buffered and direct I/O and every engine.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 256M)
img=$mnt/mc.img
truncate -s 16M "$img"
for dio in 1 0; do
  for engine in $ENGINES; do
    start_server -- file="$img" directio=$dio aio=$engine
    assert_engine "$URI" "$engine"
    $PYTHON - "$URI" "$img" <<'PY' || fail "directio=$dio $engine: multi-conn flush"
import os, sys, nbd, nbdtest
uri, path = sys.argv[1:]
a, b = nbdtest.connect(uri), nbdtest.connect(uri)
assert a.can_multi_conn() and b.can_multi_conn()
for i in range(8):
    data = os.urandom(65536 + i * 512)
    off = i * (1 << 20) + 512 * i
    a.pwrite(data, off)          # acknowledged on connection a, never flushed there
    b.flush()                    # flushed on connection b
    with open(path, "rb") as f:  # the file holds it
        f.seek(off)
        assert f.read(len(data)) == data, f"write {i} not in the file after the other's flush"
a.shutdown()
b.shutdown()
PY
    stop_server
    pass "directio=$dio $engine: write on one connection, flush on another, data in the file"
  done
done
