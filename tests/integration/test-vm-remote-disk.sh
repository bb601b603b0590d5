#!/usr/bin/env bash
# A remote VM disk: a guest under qemu whose virtio disk is a loopdio export on a Unix socket
# of this host, reached by qemu's own NBD driver (-blockdev driver=nbd, discard=unmap), on an
# ext4 image and on an xfs over a 4K-sector loop device (the guest sees 4096-byte blocks).
# The guest's files read back cold, and after deletes, fstrim and a remount; then, here,
# e2fsck -fn passes on the image, every range that held a deleted file is a hole (the trims
# reached the image) and every kept file's range still holds data.
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit e2fsck mkfs.xfs losetup sha256sum filefrag fstrim
VM_TIMEOUT=240

# 48 MiB to keep and 48 MiB to delete, in files of awkward sizes; checksums taken here.
data=$T/data
mkdir -p "$data/keep" "$data/drop"
for i in $(seq 12); do
  random_file "$data/keep/k$i" $((4 * 1048576 - 4096 + i * 1031))
  random_file "$data/drop/d$i" $((4 * 1048576 - 4096 + i * 517))
done
for n in 1 511 4097 65659; do random_file "$data/keep/s$n" $n; random_file "$data/drop/s$n" $n; done
(cd "$data" && sha256sum keep/* drop/*) >"$T/all.sums"
(cd "$data" && sha256sum keep/*) >"$T/keep.sums"

# check_extents IMAGE: the guest's EXTENT lines against the image's holes (SEEK_DATA/HOLE).
check_extents() {
  vm_console >"$T/console.txt"
  $PYTHON - "$1" "$T/console.txt" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
def data_in(off, length):
    """Bytes of [off, off+length) that are data, not hole."""
    n, pos, end = 0, off, off + length
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: only a hole follows
        if pos >= end:
            break
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        n, pos = n + hole - pos, hole
    return n
total = {"keep": [0, 0], "drop": [0, 0]}  # bytes, bytes that are data
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) == 4 and f[0] == "EXTENT":
        off, length = int(f[2]), int(f[3])
        total[f[1]][0] += length
        total[f[1]][1] += data_in(off, length)
keep, drop = total["keep"], total["drop"]
print(f"  image allocated {os.fstat(fd).st_blocks * 512 / 2**20:.1f} MiB; deleted files' ranges "
      f"{drop[0] / 2**20:.1f} MiB, of which data {drop[1] / 2**20:.1f} MiB; kept files' ranges "
      f"{keep[0] / 2**20:.1f} MiB, of which data {keep[1] / 2**20:.1f} MiB")
if not keep[0] or not drop[0]:
    sys.exit("no extents from the guest")
if keep[1] != keep[0]:
    sys.exit("kept files' ranges are holes: the check cannot tell data from holes")
if drop[1]:
    sys.exit("deleted files' ranges are still data: fstrim did not reach the image")
PY
}

for c in ext4:512:libaio xfs4k:4096:io_uring; do
  IFS=: read -r fs bs engine <<<"$c"
  mnt=$(make_fs "$fs" 1G)
  img=$mnt/remote.img
  truncate -s 512M "$img"
  start_server -- file="$img" directio=1 aio="$engine"
  assert_engine "$URI" "$engine"
  desc=$(export_description "$URI")
  case $desc in
    *"direct I/O on, alignment $bs "*) ;;
    *) fail "expected direct I/O on with alignment $bs, the export says: $desc" ;;
  esac
  echo "  $desc"
  VM_DISKS=("nbd-unix=$SOCK:$bs:discard=unmap")
  vm_run "remote-$fs" remote-disk.sh DISK_BS=$bs DATA="$data" SUMS_ALL="$T/all.sums" \
    SUMS_KEEP="$T/keep.sums"
  vm_console | sed -n 's/^TIMING /  /p'
  stop_server
  e2fsck -fn "$img" >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out"; fail "$fs: e2fsck -fn on the image"; }
  check_extents "$img" || fail "$fs: the image after fstrim"
  pass "$fs image, $bs-byte blocks, $engine: the guest's files verified cold and after fstrim, e2fsck clean, deleted ranges are holes ($VM_SECONDS s)"
done
