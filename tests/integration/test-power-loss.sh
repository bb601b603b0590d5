#!/usr/bin/env bash
# Power loss: a Debian kernel under qemu serves an image on its ext4 virtio disk through the
# kernel NBD client while writers make numbered records durable (O_DSYNC, or fdatasync) and
# log each one; the VM is killed with SIGKILL mid-load, and every logged record must be in the
# image found on the guest's disk. directio=0 and 1, and 512-byte client blocks (RMW).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit nbd-client mkfs.ext4 e2fsck losetup
writers=4

for c in 4096:4096:0 4096:4096:1 4096:512:1; do
  IFS=: read -r disk_bs nbd_bs dio <<<"$c"
  name=pl-$disk_bs-$nbd_bs-dio$dio
  disk=$T/$name.raw
  truncate -s 1G "$disk"
  VM_DISKS=("$disk:$disk_bs")
  vm_start "$name" power-loss.sh NBD_BS=$nbd_bs DIRECTIO=$dio WRITERS=$writers
  vm_wait_for '^LOAD STARTED' 180 || { vm_kill; vm_show_log "$name"; fail "$name: the load did not start"; }
  # Let the writers go round their rings of slots a few times, then cut the power.
  vm_wait_for "^REC $((writers - 1)) 100\b" 120 || { vm_kill; vm_show_log "$name"; fail "$name: the writers stalled"; }
  sleep $((1 + RANDOM % 3))
  vm_result_is FAIL && { vm_kill; vm_show_log "$name"; fail "$name: the guest failed under load"; }
  vm_kill
  by=$(vm_console | sed -n 's/^== \[.*\] attached by //p')

  dev=$(losetup -f --show "$disk")
  at_exit "losetup -d $dev"
  mkdir -p "$T/mnt"
  mount -o ro "$dev" "$T/mnt" || { vm_show_log "$name"; fail "$name: mount of the guest disk"; }
  $PYTHON "$VM_DIR/records.py" check "$T/mnt/loopdio.img" "$VM_LOG" $nbd_bs $writers ||
    { umount "$T/mnt"; vm_show_log "$name"; fail "$name: acknowledged records lost"; }
  umount "$T/mnt"
  e2fsck -fn "$dev" >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out"; fail "$name: the guest's ext4 is damaged"; }
  losetup -d "$dev"
  rm -f "$disk"
  pass "$name (attached by $by, $(vm_nbdkit)): every record acknowledged before the kill is in the image"
done
