#!/usr/bin/env bash
# The kernel's own NBD client, in a Debian kernel booted under qemu (this machine and CI have
# no nbd module): ext4 on /dev/nbd0 served with direct I/O from an ext4 virtio disk of 512-
# and 4096-byte logical blocks, and 512-byte client blocks on the 4096 disk (read-modify-write).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit nbd-client mkfs.ext4 e2fsck

for c in 512:512 4096:4096 4096:512; do
  disk_bs=${c%:*} nbd_bs=${c#*:}
  truncate -s 1G "$T/disk-$disk_bs-$nbd_bs.raw"
  VM_DISKS=("$T/disk-$disk_bs-$nbd_bs.raw:$disk_bs")
  vm_run "kc-$disk_bs-$nbd_bs" kernel-client.sh NBD_BS=$nbd_bs
  by=$(vm_console | sed -n 's/^== \[.*\] attached by //p')
  pass "disk blocks $disk_bs, client blocks $nbd_bs (attached by $by, $(vm_nbdkit)): ext4 written, verified cold, after e2fsck and through loop ($VM_SECONDS s)"
done
