#!/usr/bin/env bash
# Several connections write different bytes of the same blocks at the same moment; every
# block must end up with every connection's last byte. Without range locks around the
# read-modify-write of a partial block, one connection's stale copy of the block overwrites
# another's byte. On ext4 (512-byte blocks) and xfs on a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit mkfs.xfs losetup

for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/lu.img
  truncate -s 1M "$img"
  block=512
  [ $fs = xfs4k ] && block=4096
  for engine in $ENGINES; do
    start_server --threads 8 -- file="$img" directio=1 aio=$engine
    assert_engine "$URI" "$engine"
    $PYTHON -c "import nbdtest; nbdtest.lost_update('$URI', 1 << 20, $block, 6, 120)" ||
      fail "$fs/$engine: lost update"
    stop_server
    pass "$fs/$engine: 6 connections, 16 blocks of $block bytes, no lost update"
  done
done
