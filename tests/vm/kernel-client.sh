# Guest scenario of test-kernel-client.sh: ext4 made by the kernel NBD client on an image
# served with direct I/O from the virtio disk; files of random data written, read back cold,
# then checked again through a loop device after detach and e2fsck.
source "$VM_LIB"
step "kernel $(uname -r), $(command -v nbdkit) $nbdkit_version, vda logical block $(cat /sys/block/vda/queue/logical_block_size), nbd -b $NBD_BS"
disk_mount /dev/vda /mnt/disk
img=/mnt/disk/loopdio.img
truncate -s 256M "$img"
attach "$img" "$NBD_BS" directio=1
step "attached by $ATTACHED_BY"
[ "$(cat /sys/block/nbd0/queue/logical_block_size)" = "$NBD_BS" ] || fail "nbd0 block size"

step "mkfs.ext4 on $NBD_DEV, write files"
mkfs.ext4 -q -F "$NBD_DEV"
mkdir -p /mnt/nbd
mount "$NBD_DEV" /mnt/nbd
sizes="1 511 4097 65659 1048583 2097152"
for n in $sizes; do
  head -c "$n" /dev/urandom | tee "/mnt/nbd/f$n" | sha256sum | sed "s|-|f$n|" >>/tmp/sums
done
# One more written with O_DIRECT through ext4, in 64 KiB pieces.
head -c 2097152 /dev/urandom >/tmp/direct
dd if=/tmp/direct of=/mnt/nbd/direct bs=64k oflag=direct status=none
(cd /tmp && sha256sum direct >>/tmp/sums)
sync
umount /mnt/nbd
echo 3 >/proc/sys/vm/drop_caches

step "read back cold"
mount -o ro "$NBD_DEV" /mnt/nbd
(cd /mnt/nbd && sha256sum -c --quiet /tmp/sums)
umount /mnt/nbd
detach

step "e2fsck and read back through a loop device"
e2fsck -fn "$img"
mount -o ro,loop "$img" /mnt/nbd
(cd /mnt/nbd && sha256sum -c --quiet /tmp/sums)
umount /mnt/nbd
step "all $(wc -l </tmp/sums) files verified"
