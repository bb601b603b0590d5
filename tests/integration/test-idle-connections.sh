#!/usr/bin/env bash
# Idle connections cost no AIO slots: 300 connections that only connect raise fs.aio-nr by
# less than 10% of fs.aio-max-nr, and so do the same 300 after each wrote and read back a
# block; once they are closed, fs.aio-nr, the server's AIO contexts and its fds are where
# they started. Timeline: every connection had an AIO context of its own, taken at the
# handshake, so a few hundred idle clients used up fs.aio-max-nr (65536) for the whole
# machine, and every later connection of any server fell back to the sync engine. With one
# context per export, the rise is that one context. libaio and io_uring (which takes none).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 64M)
img=$mnt/idle.img
truncate -s 16M "$img"
max=$(cat /proc/sys/fs/aio-max-nr)

for engine in libaio io_uring; do
  start_server -- file="$img" aio=$engine max-connections=400
  fds0=$(server_fds) aio0=$(aio_nr)
  assert_engine "$URI" "$engine"
  echo "$engine: before: fds $fds0, AIO contexts $(aio_contexts), fs.aio-nr $aio0 (fs.aio-max-nr $max)"
  $PYTHON - "$URI" "$SERVER_PID" "$aio0" "$max" <<'PY' || fail "$engine: 300 connections"
import os, sys, nbd, nbdtest
uri, pid, aio0, max_nr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def measure(what):
    rise = int(open("/proc/sys/fs/aio-nr").read()) - aio0
    contexts = open(f"/proc/{pid}/maps").read().count("/[aio]")
    print(f"  300 connections, {what}: fs.aio-nr +{rise}, AIO contexts {contexts}, "
          f"fds {len(os.listdir(f'/proc/{pid}/fd'))}")
    assert rise < max_nr // 10, f"{what}: fs.aio-nr rose by {rise}, 10% of fs.aio-max-nr is {max_nr // 10}"
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
  pass "$engine: 300 connections take less than 10% of fs.aio-max-nr, and give it back"
done
