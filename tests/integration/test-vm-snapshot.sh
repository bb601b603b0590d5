#!/usr/bin/env bash
# A live snapshot under the kernel NBD client: in a Debian kernel under qemu, an image on
# xfs (reflink) served by `loopdio serve`, attached with `nbd-client` as /dev/nbd0, ext4
# mounted on it with the host's files synced and a writer still writing; `loopdio snapshot`
# clones it. The snapshot mounts after ext4's journal replay, holds every synced file (their
# checksums taken here) and passes e2fsck -fn; so does the live export afterwards. Then the
# same with the image attached by `loopdio attach` and snapshotted by its device name
# (`loopdio snapshot /dev/nbd0 DEST`).
source "$(dirname "$0")/lib.sh"
source "$TESTS_DIR/../vm/vm.sh"
vm_setup
require nbdkit nbd-client mkfs.ext4 mkfs.xfs xfs_info e2fsck losetup sha256sum
[ -x "$(dirname "$PLUGIN")/loopdio" ] || fail "no loopdio command next to $PLUGIN"
VM_TIMEOUT=300

data=$T/data
mkdir "$data"
for n in 1 4097 65659 1048583; do random_file "$data/f$n" "$n"; done
for i in $(seq 16); do random_file "$data/m$i" $((1048576 + i * 4099)); done
(cd "$data" && sha256sum -- *) >"$T/SHA256SUMS"

truncate -s 2G "$T/disk.raw"
VM_DISKS=("$T/disk.raw:512")
vm_run snapshot snapshot.sh DATA="$data" SUMS="$T/SHA256SUMS"
vm_console | grep -E "^== .*(paused|snapshot|writer|kernel: )" | sed 's/^== \[[0-9.]*\] /  /'
pass "live snapshots under a mounted, writing ext4 on /dev/nbd0 (nbd-client, then loopdio attach) mount after journal replay and fsck clean ($VM_SECONDS s)"
