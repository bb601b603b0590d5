#!/usr/bin/env bash
# Idle connections cost no AIO slots: 300 connections that only connect raise fs.aio-nr by
# no more than the one context of the export (EngineShare::kAioDepth slots, read from the
# header that states it; none for io_uring), and so do the same 300 after each wrote and
# read back a block; the server holds exactly that one AIO context; once they are closed,
# fs.aio-nr, the server's AIO contexts and its fds are where they started. Timeline: every
# connection had an AIO context of its own, taken at the handshake, so a few hundred idle
# clients used up fs.aio-max-nr (65536) for the whole machine, and every later connection
# of any server fell back to the sync engine. fs.aio-nr counts every process's contexts:
# outside CI a rise beyond the bound is excused, and printed, while other processes hold
# AIO contexts (the server's own count is checked anyway).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 64M)
img=$mnt/idle.img
truncate -s 16M "$img"
max=$(cat /proc/sys/fs/aio-max-nr)
src=${LOOPDIO_SOURCE:-$TESTS_DIR/../..}
depth=$(sed -n 's/.*\bkAioDepth *[={] *\([0-9]\+\).*/\1/p' "$src/include/loopdio/engine_share.h" |
  head -n 1)
[ -n "$depth" ] || fail "no kAioDepth in $src/include/loopdio/engine_share.h"

for engine in libaio io_uring; do
  start_server -- file="$img" aio=$engine max-connections=400
  fds0=$(server_fds) aio0=$(aio_nr)
  assert_engine "$URI" "$engine"
  echo "$engine: before: fds $fds0, AIO contexts $(aio_contexts), fs.aio-nr $aio0 (fs.aio-max-nr $max)"
  if [ $engine = libaio ]; then slots=$depth contexts=1; else slots=0 contexts=0; fi
  $PYTHON - "$URI" "$SERVER_PID" "$aio0" $slots $contexts <<'PY' || fail "$engine: 300 connections"
import glob, os, sys, nbd, nbdtest
uri, pid, aio0, slots, want_contexts = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
def aio_contexts(p):
    try:
        return open(f"/proc/{p}/maps").read().count("/[aio]")
    except OSError:
        return 0
def measure(what):
    rise = int(open("/proc/sys/fs/aio-nr").read()) - aio0
    contexts = aio_contexts(pid)
    print(f"  300 connections, {what}: fs.aio-nr +{rise} (bound {slots}), AIO contexts "
          f"{contexts}, fds {len(os.listdir(f'/proc/{pid}/fd'))}")
    assert contexts == want_contexts, f"{what}: {contexts} AIO contexts, not {want_contexts}"
    if rise <= slots:
        return
    others = [m.split("/")[2] for m in glob.glob("/proc/[0-9]*/maps")
              if m.split("/")[2] != pid and aio_contexts(m.split("/")[2])]
    if os.environ.get("CI") != "true" and others:
        print(f"  {what}: processes {' '.join(others)} hold AIO contexts: rise not compared")
        return
    raise AssertionError(f"{what}: fs.aio-nr rose by {rise}, more than the export's {slots}")
handles = [nbdtest.connect(uri, strict=False) for _ in range(300)]
measure("idle")
for k, h in enumerate(handles):
    data = os.urandom(1000) + bytes([k % 256])
    h.pwrite(data, k * 4097)
    if h.pread(len(data), k * 4097) != data:
        raise AssertionError(f"connection {k}: wrong data")
measure("each after a write and a read")
for h in handles:
    h.shutdown()
PY
  expect_fds "$fds0" "$engine"
  wait_until 10 eval '[ "$(aio_contexts)" -eq 0 ]' || fail "$engine: $(aio_contexts) AIO contexts left"
  expect_aio_nr "$aio0" "$engine"
  echo "$engine: after: fds $(server_fds), AIO contexts $(aio_contexts), fs.aio-nr $(aio_nr)"
  stop_server
  pass "$engine: 300 connections take at most $slots of fs.aio-nr (the export's one context), and give it back"
done
