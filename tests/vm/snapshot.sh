# Guest scenario of test-vm-snapshot.sh: a live snapshot of an export that the kernel client
# has mounted and is writing to. The image lives on xfs (reflink) on the guest's virtio disk;
# `loopdio serve --port 10809` serves it on the guest's loopback, `nbd-client` attaches it as
# /dev/nbd0, ext4 is made and mounted there, the host's files ($DATA) are copied in and
# synced, and a writer keeps creating files while `loopdio snapshot` clones the image. The
# snapshot, attached read-write with losetup, mounts (ext4 replays its journal: the clone is
# crash-consistent, as after a power cut), holds every synced file intact, and passes
# e2fsck -fn after the replay. Then the same with the image attached by `loopdio attach` and
# the snapshot asked by its device: `loopdio snapshot /dev/nbd0 DEST`.
source "$VM_LIB"
step "kernel $(uname -r), $(command -v nbdkit) $nbdkit_version"
[ -x "$LOOPDIO_CLI" ] || fail "no loopdio command at $LOOPDIO_CLI"
ip link set lo up
mkfs.xfs -q -f /dev/vda
mkdir -p /mnt/disk /mnt/nbd /mnt/snap
mount /dev/vda /mnt/disk
xfs_info /mnt/disk | grep -q 'reflink=1' || fail "mkfs.xfs made no reflink=1 filesystem"
img=/mnt/disk/loopdio.img
truncate -s 512M "$img"

serve_tcp "$img"
uri=$("$LOOPDIO_CLI" list --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["uri"])')

nbd-client localhost /dev/nbd0 || fail "nbd-client localhost /dev/nbd0"
mkfs.ext4 -q -F /dev/nbd0
mount /dev/nbd0 /mnt/nbd
cp -r "$DATA" /mnt/nbd/before
sync
step "ext4 on /dev/nbd0 holds the host's files, synced"

# busy_snapshot TARGET DEST: with a writer creating files on /mnt/nbd (data and journal),
# `loopdio snapshot TARGET DEST`; then DEST, attached with losetup, must need journal
# recovery (it was taken while mounted), mount, hold every synced file ($SUMS, in before/)
# and pass e2fsck -fn after the replay.
busy_snapshot() {
  local writer dev
  rm -f /mnt/nbd/during.*
  ( i=0; while :; do
      dd if=/dev/urandom of=/mnt/nbd/during.$i bs=64k count=16 status=none 2>/dev/null || exit 0
      i=$((i + 1))
    done ) &
  writer=$!
  for _ in $(seq 600); do [ -e /mnt/nbd/during.3 ] && break; sleep 0.05; done
  [ -e /mnt/nbd/during.3 ] || fail "the writer did not start"
  "$LOOPDIO_CLI" snapshot "$1" "$2" >/tmp/snap.out 2>&1 ||
    { cat /tmp/snap.out; fail "loopdio snapshot $1 $2"; }
  step "$(cat /tmp/snap.out)"
  for _ in $(seq 600); do [ -e /mnt/nbd/during.8 ] && break; sleep 0.05; done
  kill $writer
  wait $writer 2>/dev/null || true
  step "the writer wrote $(ls /mnt/nbd | grep -c '^during') files; the snapshot was taken among them"

  dev=$(losetup -f --show "$2") || fail "losetup of the snapshot"
  dumpe2fs -h "$dev" 2>/dev/null | grep -q needs_recovery ||
    fail "the snapshot's ext4 does not need recovery: it was not taken while mounted"
  mount "$dev" /mnt/snap || { dmesg | tail -20; fail "the snapshot does not mount"; }
  step "kernel: $(dmesg | grep -i 'recovery complete' | tail -1 | sed 's/^\[[ 0-9.]*\] //')"
  (cd /mnt/snap/before && sha256sum -c --quiet "$SUMS") || fail "the synced files in the snapshot"
  umount /mnt/snap
  e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck -fn on the snapshot"; }
  losetup -d "$dev"
  step "the snapshot mounted (journal replayed), every synced file verified, e2fsck -fn clean"
}

busy_snapshot "$uri" /mnt/disk/snap.img

# The origin is unharmed by its snapshot and its fsck.
umount /mnt/nbd
e2fsck -fn /dev/nbd0 >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck -fn /dev/nbd0"; }
nbd-client -d /dev/nbd0
kill $serve_pid
wait $serve_pid || fail "loopdio serve exited with $? on SIGTERM"
step "the live export is clean too"

# Attached by `loopdio attach`, named by its device.
img2=/mnt/disk/attached.img
truncate -s 512M "$img2"
attach_cli "$img2" 512
mkfs.ext4 -q -F /dev/nbd0
mount /dev/nbd0 /mnt/nbd
cp -r "$DATA" /mnt/nbd/before
sync
busy_snapshot /dev/nbd0 /mnt/disk/snap-nbd0.img
umount /mnt/nbd
"$LOOPDIO_CLI" detach /dev/nbd0
step "loopdio attach: the snapshot of /dev/nbd0 too"
