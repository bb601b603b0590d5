#!/usr/bin/env bash
# The kernel NBD client over TCP, as the README writes it: in a Debian kernel under qemu,
# `loopdio serve --port 10809 IMAGE` and `nbd-client localhost /dev/nbd0`, then with -C 4;
# ext4 on the device holds the host's files, which must read back cold and pass e2fsck -fn.
# An image on a 512-byte and on a 4096-byte (nbd-client -b 4096) virtio disk.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit nbd-client nbdinfo mkfs.ext4 e2fsck ip sha256sum
[ -x "$(dirname "$PLUGIN")/loopdio" ] || fail "no loopdio command next to $PLUGIN"
VM_TIMEOUT=300

# Files of every awkward size, 142 MiB in all; their checksums are taken here, on the host.
data=$T/data
mkdir "$data"
for n in 1 511 512 4095 4097 65659 131072 1048583 2097151; do random_file "$data/f$n" "$n"; done
for i in $(seq 40); do random_file "$data/m$i" $((1048576 + i * 4099)); done
for i in 1 2 3 4; do random_file "$data/l$i" $((24 * 1048576 + i * 511)); done
(cd "$data" && sha256sum -- *) >"$T/SHA256SUMS"

for bs in 512 4096; do
  truncate -s 1G "$T/disk-$bs.raw"
  VM_DISKS=("$T/disk-$bs.raw:$bs")
  vm_run "tcp-$bs" nbd-client-tcp.sh NBD_BS=$bs DATA="$data" SUMS="$T/SHA256SUMS"
  vm_console | sed -n 's/^TIMING /  /p'
  rm -f "$T/disk-$bs.raw"
  pass "$bs-byte disk ($(vm_nbdkit)): loopdio serve on TCP 10809, nbd-client with 1 and 4 connections: every file read back cold, e2fsck clean ($VM_SECONDS s)"
done
