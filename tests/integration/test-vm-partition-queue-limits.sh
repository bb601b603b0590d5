#!/usr/bin/env bash
# Regression test: a partition got no trim and no fast zero. In a Debian kernel under qemu, a
# virtio disk with discard and write zeroes (discard=unmap on the raw image) and one MBR
# partition; the plugin serves /dev/vda1, and /dev/vda whole as the control. Each export must
# advertise trim and fast zero (nbdinfo, libnbd), a trimmed and a fast-zeroed range must read
# back as zeroes, and the trimmed ranges must be holes in the image here.
#
# The timeline: the probe read queue/discard_max_bytes and queue/write_zeroes_max_bytes from
# the device's own /sys/dev/block/MAJ:MIN/queue/, which a partition does not have (only its
# disk has a queue). Both read as 0 for /dev/vda1, so its export advertised no trim and
# refused every fast zero with ENOTSUP (it still advertised can_fast_zero), while /dev/vda
# had both. The probe now walks from a partition to its disk's queue, as it already did for
# logical_block_size. The plugin of commit 674c75e fails here on /dev/vda1 (can_trim: false,
# fast zero: Operation not supported) and does both on /dev/vda (in a guest of 128 MiB its
# per-thread bounce buffers got it killed by the OOM killer there first).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit nbdinfo

mnt=$(make_fs ext4 256M)
disk=$mnt/disk.raw
truncate -s 64M "$disk"
# One Linux partition, 1 MiB to 33 MiB (LBA 2048, 65536 sectors); CHS fields unused.
$PYTHON - "$disk" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(446)
    f.write(struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), 2048, 65536))
    f.seek(510)
    f.write(b"\x55\xaa")
PY

VM_DISKS=("$disk:512:discard=unmap")
vm_run partition partition-queue-limits.sh
vm_console | grep -E '^(ok|FAIL):|^\s*can_|^== .*(vda:|/dev/vda)' | sed 's/^\s*/  /'

# The trims reached the image: each range the guest trimmed is a hole in the raw file.
vm_console | awk '$1 == "TRIMMED" { print $2, $3, $4 }' >"$T/trimmed"
[ "$(wc -l <"$T/trimmed")" = 2 ] || fail "the guest reported $(wc -l <"$T/trimmed") trimmed ranges, expected 2"
$PYTHON - "$disk" "$T/trimmed" <<'PY' || fail "a trim did not reach the image"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
bad = False
for line in open(sys.argv[2]):
    name, off, length = line.split()
    off, length = int(off), int(length)
    try:
        data = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        data = os.fstat(fd).st_size  # ENXIO: only a hole follows
    hole = data >= off + length
    print(f"  {name}: bytes {off}-{off + length} of the image " + ("are a hole" if hole else f"hold data from {data}"))
    bad |= not hole
sys.exit(1 if bad else 0)
PY
pass "/dev/vda1 and /dev/vda: trim and fast zero advertised, both read back as zeroes, trims are holes in the image ($VM_SECONDS s)"
