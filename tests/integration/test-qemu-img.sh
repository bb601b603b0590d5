#!/usr/bin/env bash
# A real image converted into an export and back out with qemu-img, checked with
# qemu-img compare, on ext4 and on xfs over a 4K-sector loop device.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit qemu-img mkfs.xfs losetup

# The source: a 64 MiB raw disk with an ext4 filesystem, files of random data and holes.
src=$T/source.img
truncate -s 64M "$src"
mkfs.ext4 -q -F "$src"
mkdir "$T/m"
mount -o loop "$src" "$T/m"
at_exit "umount -l $T/m"
for i in 1 2 3; do head -c $((3 << 20)) /dev/urandom >"$T/m/file$i"; done
umount "$T/m"

for fs in ext4 xfs4k; do
  mnt=$(make_fs $fs 512M)
  img=$mnt/target.img
  for engine in libaio io_uring; do
    truncate -s 64M "$img"
    start_server -- file="$img" directio=1 aio=$engine
    assert_engine "$URI" "$engine"
    qemu-img convert -n -f raw -O raw "$src" "$URI" || fail "$fs/$engine: convert in"
    qemu-img compare -f raw -F raw "$src" "$URI" || fail "$fs/$engine: compare export"
    qemu-img convert -f raw -O qcow2 "$URI" "$T/out.qcow2" || fail "$fs/$engine: convert out"
    qemu-img compare -f raw -F qcow2 "$src" "$T/out.qcow2" || fail "$fs/$engine: compare copy"
    stop_server
    cmp "$src" "$img" || fail "$fs/$engine: image file differs"
    rm -f "$T/out.qcow2" "$img"
    pass "$fs/$engine: qemu-img convert in and out"
  done
done
