#!/usr/bin/env bash
# fio through the NBD engine: several jobs, mixed block sizes, every block verified with
# crc32c and the first mismatch fatal. On ext4 and xfs over a 4K-sector loop device. libnbd
# honours the advertised minimum block size, so on the 4K backing fio's blocks start at 4K
# (the read-modify-write path there is driven by the libnbd tests with strict mode off).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit fio mkfs.xfs losetup

for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/fio.img
  truncate -s 128M "$img"
  min=512
  [ $fs = xfs4k ] && min=4096
  for engine in $ENGINES; do
    start_server --threads 16 -- file="$img" directio=1 aio=$engine
    assert_engine "$URI" "$engine"
    # Each job owns a 32 MiB region, so that verification is exact. fio saves its verify
    # state in the working directory: $T's.
    (cd "$T" && fio --name=verify --ioengine=nbd --uri="$URI" --rw=randwrite --bsrange=$min-128k \
      --blockalign=$min --size=32M --offset_increment=32M --numjobs=4 --iodepth=8 \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --number_ios=1500 \
      --group_reporting >"$T/fio.out" 2>&1) || { cat "$T/fio.out" "$SERVER_LOG"; fail "$fs/$engine: fio verify"; }
    grep -q "err= 0" "$T/fio.out" || { cat "$T/fio.out" "$SERVER_LOG"; fail "$fs/$engine: fio reported errors"; }
    stop_server
    pass "$fs/$engine: fio 4 jobs, $min-128k writes, crc32c verified"
  done
done
