# Guest scenario of test-vm-remote-disk.sh: /dev/vda is the host's loopdio export, reached by
# qemu's own NBD driver. ext4 made on it holds the host's files ($DATA/keep, $DATA/drop), read
# back cold; drop/ is deleted and fstrim run, keep/ read back after a remount. The disk's
# byte ranges that held each kind are printed (EXTENT drop|keep OFFSET LENGTH) for the host.
source "$VM_LIB"
q=/sys/block/vda/queue
step "kernel $(uname -r), vda logical block $(cat $q/logical_block_size), discard_max_bytes $(cat $q/discard_max_bytes), discard_granularity $(cat $q/discard_granularity)"
[ "$(cat $q/logical_block_size)" = "$DISK_BS" ] || fail "vda logical block size is not $DISK_BS"
[ "$(cat $q/discard_max_bytes)" -gt 0 ] || fail "vda offers no discard"
now() { cut -d" " -f1 /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
cold_mount() {
  umount /mnt/disk
  echo 3 >/proc/sys/vm/drop_caches
  mount /dev/vda /mnt/disk
}

mkdir -p /mnt/disk
mkfs.ext4 -q -F /dev/vda
mount /dev/vda /mnt/disk
t=$(now)
cp -r "$DATA/keep" "$DATA/drop" /mnt/disk/
sync
write_s=$(took "$t")
cold_mount
t=$(now)
(cd /mnt/disk && sha256sum -c --quiet "$SUMS_ALL") || fail "checksums after a remount"
verify_s=$(took "$t")
step "$(wc -l <"$SUMS_ALL") files written in $write_s s, read back cold in $verify_s s"

# Physical extents in bytes of the disk: filefrag's are in filesystem blocks.
bs=$(stat -f -c %S /mnt/disk)
for kind in keep drop; do
  for f in /mnt/disk/$kind/*; do
    filefrag -e "$f" | awk -v kind=$kind -v bs="$bs" '
      $1 ~ /^[0-9]+:$/ { gsub(/[.:]+/, " "); split($0, x, " ")
                         printf "EXTENT %s %.0f %.0f\n", kind, x[4] * bs, x[6] * bs; n++ }
      END { if (!n) exit 1 }' || fail "no extents for $f"
  done
done

rm -r /mnt/disk/drop
sync  # ext4 frees the blocks once the deletion is committed
t=$(now)
fstrim -v /mnt/disk
trim_s=$(took "$t")
cold_mount
(cd /mnt/disk && sha256sum -c --quiet "$SUMS_KEEP") || fail "kept files after fstrim and a remount"
umount /mnt/disk
step "drop/ deleted, fstrim in $trim_s s, $(wc -l <"$SUMS_KEEP") kept files verified after a remount"
echo "TIMING write=${write_s}s verify=${verify_s}s fstrim=${trim_s}s"
