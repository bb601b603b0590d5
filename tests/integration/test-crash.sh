#!/usr/bin/env bash
# SIGKILL of the server under a write load from several connections: after a restart every
# write acknowledged with FUA, or before a flush that completed, holds its data (durability.py).
# The kernel keeps what reached it, so this proves loopdio acknowledges only what it wrote.
# directio=1 and 0, libaio and io_uring, on ext4 and on xfs over a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo mkfs.xfs losetup

seed=${LOOPDIO_CRASH_SEED:-$RANDOM}
echo "seed $seed (LOOPDIO_CRASH_SEED=$seed replays the same requests and kill times)"
round=0
for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  for directio in 1 0; do
    for engine in libaio io_uring; do
      for pass_no in 1 2; do
        round=$((round + 1))
        kill_after=$(((seed + round) % 8 + 3 * pass_no))  # tenths of a second: 0.3 to 1.3
        kill_after=$((kill_after / 10)).$((kill_after % 10))
        what="$fs directio=$directio $engine"
        img=$mnt/crash$round.img
        truncate -s 1M "$img"
        start_server -- file="$img" directio=$directio aio=$engine
        assert_engine "$URI" "$engine"
        $PYTHON -m durability load "$URI" 4 $((seed + round)) "$SERVER_PID" "$kill_after" \
          "$T/log$round.json" || fail "$what: the load failed"
        rc=0
        wait "$SERVER_PID" || rc=$?
        [ $rc -eq 137 ] || fail "$what: the server exited with $rc, not by SIGKILL"
        start_server -- file="$img" directio=$directio aio=$engine
        $PYTHON -m durability check "$URI" "$T/log$round.json" ||
          fail "$what: acknowledged data lost across SIGKILL (seed $seed)"
        stop_server
        pass "$what, SIGKILL after ${kill_after}s"
      done
    done
  done
done
